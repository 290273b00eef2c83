#!/usr/bin/env bash
# Run a sciriff-jax experiment on a Cloud TPU VM or pod slice: create or reuse the TPU, copy this
# repo to every worker, install it, clear stale TPU state, start `python -m sciriff_jax.main` on all
# workers in the background, and (with --resume) re-create a preempted TPU and start the run again.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  cat <<'EOF'
Usage: launch_tpu.sh [COMMAND] [FLAGS] [-- ARGS FOR sciriff_jax.main]

Commands:
  run      (default) create or reuse the TPU, copy + install the repo, clear stale TPU
           processes and the libtpu lock, start the run on every worker in the background
  logs     print the last lines of every worker's log (--follow: stream worker 0's log;
           --fetch DIR: copy all workers' logs into DIR)
  status   print the TPU state and whether the run is alive on each worker
  stop     stop the run on every worker and clear the libtpu lock
  delete   delete the TPU VM (and its queued resource with --queued)

Flags (environment variable in brackets; flags win):
  --name NAME               TPU VM / queued resource name            [TPU_NAME]  (required)
  --zone ZONE               e.g. us-east5-a                           [TPU_ZONE]  (required)
  --project PROJECT         GCP project (default: gcloud's)           [TPU_PROJECT]
  --accelerator-type TYPE   e.g. v4-64, v5p-128, v5litepod-256         [TPU_ACCELERATOR_TYPE]
                            (required when the TPU must be created)
  --runtime-version VER     TPU software version (default from the type: v4 ->
                            tpu-ubuntu2204-base, v5p -> v2-alpha-tpuv5, v5e ->
                            v2-alpha-tpuv5-lite, v6e -> v2-alpha-tpuv6e) [TPU_RUNTIME_VERSION]
  --spot                    create a Spot TPU (can be preempted)      [TPU_SPOT=1]
  --preemptible             create a preemptible TPU (older flavour)  [TPU_PREEMPTIBLE=1]
  --queued                  create through a queued resource (waits for capacity) [TPU_QUEUED=1]
  --resume                  after starting, watch the run: when the TPU is preempted, re-create
                            it and start the same command again (the run restores the latest
                            checkpoint in MODEL_DIR itself); stops when worker 0 finishes
  --poll-seconds N          how often --resume checks the TPU (default 120) [TPU_POLL_SECONDS]
  --max-restarts N          give up after N re-creations (default 20)     [TPU_MAX_RESTARTS]
  --remote-dir DIR          repo location on the workers (default sciriff-jax, under $HOME)
  --venv DIR                virtualenv on the workers (default sciriff-venv, under $HOME)
  --python-version VER      Python for that virtualenv, installed by uv (default 3.11)
  --extras LIST             pip extras to install (default tpu,data)
  --log-dir DIR             log folder on the workers (default sciriff-logs, under $HOME)
  --env KEY=VALUE           export KEY=VALUE for the run on every worker (repeatable), e.g.
                            --env TFDS_DATA_DIR=gs://bucket/tfds
  --skip-copy               do not copy the repo (it is already on the workers)
  --skip-install            do not (re)install the repo on the workers
  --worker N                for `logs --follow`: which worker to follow (default 0)
  --lines N                 for `logs`: lines per worker (default 50)
  --follow                  for `logs`: stream the log of one worker
  --fetch DIR               for `logs`: copy every worker's log into local folder DIR
  --dry-run                 print every command (gcloud, tar) instead of running it
  -h, --help                show this help

Everything after `--` goes to `python -m sciriff_jax.main` unchanged, for example:
  ./launch_tpu.sh --name scitulu --zone us-east5-a --accelerator-type v5p-128 --spot --resume -- \
      --gin_file=gin_configs/experiments/scitulu_7b.gin --gin.MODEL_DIR="'gs://my-bucket/scitulu_7b'"
EOF
}

die() { echo "launch_tpu.sh: error: $*" >&2; exit 2; }
log() { echo "[launch_tpu $(date -u +%H:%M:%S)] $*" >&2; }

# --- configuration: environment first, flags override ---------------------------------------
COMMAND="run"
NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
ACCELERATOR_TYPE="${TPU_ACCELERATOR_TYPE:-}"
RUNTIME_VERSION="${TPU_RUNTIME_VERSION:-}"
SPOT="${TPU_SPOT:-0}"
PREEMPTIBLE="${TPU_PREEMPTIBLE:-0}"
QUEUED="${TPU_QUEUED:-0}"
RESUME=0
POLL_SECONDS="${TPU_POLL_SECONDS:-120}"
MAX_RESTARTS="${TPU_MAX_RESTARTS:-20}"
REMOTE_DIR="sciriff-jax"
VENV="sciriff-venv"
PYTHON_VERSION="3.11"
EXTRAS="tpu,data"
LOG_DIR="sciriff-logs"
SKIP_COPY=0
SKIP_INSTALL=0
WORKER=0
LINES=50
FOLLOW=0
FETCH_DIR=""
DRY_RUN=0
RUN_ENV=()
MAIN_ARGS=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "flag $1 needs a value (see --help)"; }

case "${1:-}" in
  run|logs|status|stop|delete) COMMAND="$1"; shift ;;
esac
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
    --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
    --accelerator-type) need_value "$@"; ACCELERATOR_TYPE="$2"; shift 2 ;;
    --runtime-version) need_value "$@"; RUNTIME_VERSION="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --preemptible) PREEMPTIBLE=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --resume) RESUME=1; shift ;;
    --poll-seconds) need_value "$@"; POLL_SECONDS="$2"; shift 2 ;;
    --max-restarts) need_value "$@"; MAX_RESTARTS="$2"; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR="$2"; shift 2 ;;
    --venv) need_value "$@"; VENV="$2"; shift 2 ;;
    --python-version) need_value "$@"; PYTHON_VERSION="$2"; shift 2 ;;
    --extras) need_value "$@"; EXTRAS="$2"; shift 2 ;;
    --log-dir) need_value "$@"; LOG_DIR="$2"; shift 2 ;;
    --env) need_value "$@"; [[ "$2" == *=* ]] || die "--env wants KEY=VALUE, got '$2'"; RUN_ENV+=("$2"); shift 2 ;;
    --skip-copy) SKIP_COPY=1; shift ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    --worker) need_value "$@"; WORKER="$2"; shift 2 ;;
    --lines) need_value "$@"; LINES="$2"; shift 2 ;;
    --follow) FOLLOW=1; shift ;;
    --fetch) need_value "$@"; FETCH_DIR="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) die "unknown argument '$1' (arguments for sciriff_jax.main go after '--'; see --help)" ;;
  esac
done

[[ -n "$NAME" ]] || die "no TPU name: pass --name NAME or set TPU_NAME"
[[ -n "$ZONE" ]] || die "no zone: pass --zone ZONE (e.g. us-east5-a) or set TPU_ZONE"
[[ "$SPOT" == 1 && "$PREEMPTIBLE" == 1 ]] && die "--spot and --preemptible exclude each other; pick one"
[[ "$POLL_SECONDS" =~ ^[0-9]+$ ]] || die "--poll-seconds wants a whole number, got '$POLL_SECONDS'"
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "--max-restarts wants a whole number, got '$MAX_RESTARTS'"

default_runtime_version() {
  case "$1" in
    v2-*|v3-*) echo "tpu-ubuntu2204-base" ;;
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) die "no default runtime version for accelerator type '$1'; pass --runtime-version" ;;
  esac
}

GCLOUD_LOC=("--zone=$ZONE")
[[ -n "$PROJECT" ]] && GCLOUD_LOC+=("--project=$PROJECT")

# --- running commands (or printing them with --dry-run) ---------------------------------------
# Quote one word for a POSIX shell, readably: bare when safe, else in single quotes.
shq() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

print_cmd() {
  local out="+" word
  for word in "$@"; do out+=" $(shq "$word")"; done
  echo "$out"
}

# Dry-run output goes to fd 3 (the script's stdout) so it shows even inside $(...).
exec 3>&1

# Run a command; in --dry-run only print it.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then print_cmd "$@" >&3; return 0; fi
  print_cmd "$@" >&2
  "$@"
}

# Run a command whose stdout we need; in --dry-run print it and answer with $DRY_ANSWER.
query() {
  if [[ "$DRY_RUN" == 1 ]]; then print_cmd "$@" >&3; echo "${DRY_ANSWER:-}"; return 0; fi
  "$@"
}

ssh_all() { run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_LOC[@]}" --worker=all --command="$1"; }

# --- remote shell snippets ---------------------------------------------------------------------
# Stale processes from an earlier run hold /dev/accel* (v2-v4) or /dev/vfio/* (v5e, v5p, v6e);
# libtpu refuses to start while they live or while /tmp/libtpu_lockfile remains.
# shellcheck disable=SC2016  # these $(...) and $pids expand on the workers, not here
REMOTE_CLEAR_TPU='pids=$(sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u || true); '\
'if [ -n "$pids" ]; then echo "$(hostname): killing stale TPU processes: $pids"; sudo kill -9 $pids || true; sleep 2; fi; '\
'sudo rm -f /tmp/libtpu_lockfile'

remote_install_script() {
  local extras_q
  extras_q="$(shq ".[${EXTRAS}]")"
  # uv brings its own Python, so the worker image's python3.10 does not matter.
  echo "set -e; mkdir -p $REMOTE_DIR && tar -xzf sciriff-jax-src.tgz -C $REMOTE_DIR && rm -f sciriff-jax-src.tgz; " \
       "command -v uv >/dev/null || [ -x \$HOME/.local/bin/uv ] || python3 -m pip install --user --quiet uv; " \
       "export PATH=\$HOME/.local/bin:\$PATH; " \
       "[ -x $VENV/bin/python ] || uv venv --python $PYTHON_VERSION $VENV; " \
       "cd $REMOTE_DIR && uv pip install --python \$HOME/$VENV/bin/python -e $extras_q"
}

remote_run_script() {
  local env_part="" arg main_q=""
  for arg in "${RUN_ENV[@]+"${RUN_ENV[@]}"}"; do env_part+="export $(shq "$arg"); "; done
  for arg in "${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"}"; do main_q+=" $(shq "$arg")"; done
  # nohup + closed stdin/stdout keep the run alive after ssh returns; the arguments travel as
  # positional parameters so the fixed `bash -c` script needs no second layer of quoting. The exit
  # code file tells --resume whether the run finished or died.
  echo "mkdir -p \$HOME/$LOG_DIR && cd $REMOTE_DIR && ${env_part}" \
       "export EXIT_FILE=\$HOME/$LOG_DIR/exit_code.\$(hostname); rm -f \$EXIT_FILE; " \
       "nohup bash -c '\"\$@\"; echo \$? > \"\$EXIT_FILE\"' run" \
       "\$HOME/$VENV/bin/python -m sciriff_jax.main${main_q}" \
       "> \$HOME/$LOG_DIR/\$(hostname).log 2>&1 < /dev/null & " \
       "echo \"\$(hostname): started, log \$HOME/$LOG_DIR/\$(hostname).log\""
}

# --- TPU lifecycle -------------------------------------------------------------------------------
tpu_state() {
  if [[ "$QUEUED" == 1 ]]; then
    query gcloud compute tpus queued-resources describe "$NAME" "${GCLOUD_LOC[@]}" \
      --format='value(state.state)' 2>/dev/null || true
  else
    query gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_LOC[@]}" \
      --format='value(state)' 2>/dev/null || true
  fi
}

create_tpu() {
  [[ -n "$ACCELERATOR_TYPE" ]] || die "TPU '$NAME' does not exist and no --accelerator-type (or TPU_ACCELERATOR_TYPE) was given to create it"
  local version="${RUNTIME_VERSION:-$(default_runtime_version "$ACCELERATOR_TYPE")}"
  local capacity=()
  [[ "$SPOT" == 1 ]] && capacity+=(--spot)
  if [[ "$QUEUED" == 1 ]]; then
    [[ "$PREEMPTIBLE" == 1 ]] && die "queued resources take --spot, not --preemptible"
    log "creating queued resource $NAME ($ACCELERATOR_TYPE, $version); waits for capacity"
    run gcloud compute tpus queued-resources create "$NAME" "${GCLOUD_LOC[@]}" --node-id="$NAME" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$version" "${capacity[@]+"${capacity[@]}"}"
    wait_for_active
  else
    [[ "$PREEMPTIBLE" == 1 ]] && capacity+=(--preemptible)
    log "creating TPU VM $NAME ($ACCELERATOR_TYPE, $version)"
    run gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_LOC[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$version" "${capacity[@]+"${capacity[@]}"}"
  fi
}

wait_for_active() {
  [[ "$DRY_RUN" == 1 ]] && { echo "# (waits until the queued resource is ACTIVE)"; return 0; }
  local state
  while true; do
    state="$(tpu_state)"
    case "$state" in
      ACTIVE) log "queued resource $NAME is ACTIVE"; return 0 ;;
      FAILED|SUSPENDED) die "queued resource $NAME is $state; see: gcloud compute tpus queued-resources describe $NAME --zone=$ZONE" ;;
      *) log "queued resource $NAME is ${state:-unknown}; waiting"; sleep "$POLL_SECONDS" ;;
    esac
  done
}

delete_tpu() {
  if [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_LOC[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_LOC[@]}" --quiet
  fi
}

ensure_tpu() {
  local state
  [[ "$DRY_RUN" == 1 ]] && echo "# dry-run: assuming TPU $NAME does not exist yet"
  state="$(tpu_state)"
  case "$state" in
    READY|ACTIVE) log "reusing TPU $NAME ($state)" ;;
    "") create_tpu ;;
    PREEMPTED|TERMINATED|FAILED|SUSPENDED)
      log "TPU $NAME is $state; deleting and re-creating it"; delete_tpu; create_tpu ;;
    CREATING|PROVISIONING|WAITING_FOR_RESOURCES|ACCEPTED|STARTING)
      log "TPU $NAME is $state; waiting"
      if [[ "$QUEUED" == 1 ]]; then wait_for_active; else sleep "$POLL_SECONDS"; ensure_tpu; fi ;;
    *) die "TPU $NAME is in state '$state'; fix it (or run: launch_tpu.sh delete --name $NAME --zone $ZONE) and retry" ;;
  esac
}

copy_repo() {
  local tarball="${TMPDIR:-/tmp}/sciriff-jax-src-$NAME.tgz"
  log "packing $SCRIPT_DIR (without .git, .venv, caches, runs/)"
  run tar -czf "$tarball" -C "$SCRIPT_DIR" --exclude=.git --exclude=.venv --exclude=__pycache__ \
    --exclude=.pytest_cache --exclude='*.egg-info' --exclude=runs --exclude=logs .
  run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:sciriff-jax-src.tgz" "${GCLOUD_LOC[@]}" --worker=all
}

start_run() {
  log "clearing stale TPU processes and the libtpu lock on every worker"
  ssh_all "$REMOTE_CLEAR_TPU"
  log "starting sciriff_jax.main on every worker (logs in ~/$LOG_DIR/<hostname>.log)"
  ssh_all "$(remote_run_script)"
}

launch() {
  ensure_tpu
  if [[ "$SKIP_COPY" == 0 ]]; then copy_repo; fi
  if [[ "$SKIP_INSTALL" == 0 ]]; then
    [[ "$SKIP_COPY" == 1 ]] && die "--skip-copy with install: the install unpacks the copied repo; add --skip-install too"
    log "installing the repo on every worker (pip extras: $EXTRAS)"
    ssh_all "$(remote_install_script)"
  fi
  start_run
}

# Worker 0's exit code file: empty while the run lives, else its exit status.
worker0_exit_code() {
  query gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_LOC[@]}" --worker=0 \
    --command="cat \$HOME/$LOG_DIR/exit_code.\$(hostname) 2>/dev/null || true" 2>/dev/null || true
}

watch_and_resume() {
  local restarts=0 state code
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# --resume: every ${POLL_SECONDS}s check the TPU state and worker 0's exit code:"
    DRY_ANSWER="" tpu_state >/dev/null
    DRY_ANSWER="" worker0_exit_code >/dev/null
    echo "# when PREEMPTED/TERMINATED (or gone): delete, re-create, copy, install and start the run again:"
    delete_tpu
    return 0
  fi
  while true; do
    sleep "$POLL_SECONDS"
    state="$(tpu_state)"
    case "$state" in
      READY|ACTIVE)
        code="$(worker0_exit_code | tr -d '[:space:]')"
        if [[ "$code" == 0 ]]; then log "run finished on worker 0"; return 0; fi
        if [[ -n "$code" ]]; then
          die "run exited with status $code on worker 0; see: launch_tpu.sh logs --name $NAME --zone $ZONE"
        fi ;;
      CREATING|PROVISIONING|WAITING_FOR_RESOURCES|ACCEPTED|STARTING|REPAIRING) log "TPU $NAME is $state" ;;
      *)
        restarts=$((restarts + 1))
        [[ "$restarts" -le "$MAX_RESTARTS" ]] || die "TPU $NAME was lost $restarts times (--max-restarts $MAX_RESTARTS); giving up"
        log "TPU $NAME is ${state:-gone} (preempted?); re-creating, restart $restarts of at most $MAX_RESTARTS"
        [[ -n "$state" ]] && delete_tpu
        create_tpu
        SKIP_COPY=0 SKIP_INSTALL=0 launch ;;
    esac
  done
}

show_logs() {
  if [[ -n "$FETCH_DIR" ]]; then
    run mkdir -p "$FETCH_DIR"
    run gcloud compute tpus tpu-vm scp "$NAME:$LOG_DIR/*" "$FETCH_DIR/" "${GCLOUD_LOC[@]}" --worker=all
  elif [[ "$FOLLOW" == 1 ]]; then
    run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_LOC[@]}" --worker="$WORKER" \
      --command="tail -n $LINES -F \$HOME/$LOG_DIR/\$(hostname).log"
  else
    ssh_all "echo \"===== \$(hostname) =====\"; tail -n $LINES \$HOME/$LOG_DIR/\$(hostname).log"
  fi
}

case "$COMMAND" in
  run)
    launch
    if [[ "$RESUME" == 1 ]]; then watch_and_resume; fi ;;
  logs) show_logs ;;
  status)
    DRY_ANSWER=READY
    log "TPU $NAME: $(tpu_state)"
    ssh_all "if pgrep -f sciriff_jax.main >/dev/null; then echo \"\$(hostname): running\"; else echo \"\$(hostname): not running (exit code: \$(cat \$HOME/$LOG_DIR/exit_code.\$(hostname) 2>/dev/null || echo none))\"; fi" ;;
  stop)
    ssh_all "pkill -f sciriff_jax.main || true; sleep 2; $REMOTE_CLEAR_TPU" ;;
  delete) delete_tpu ;;
esac
