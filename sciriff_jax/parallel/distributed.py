"""Multi-host start-up: `jax.distributed.initialize` on TPU pods, and on GPU/CPU clusters from the environment."""
from __future__ import annotations

import os

import jax

_initialized = False


def cluster_env(env=None) -> dict | None:
    """Coordinator address, process count and id from COORDINATOR_ADDRESS/NUM_PROCESSES/PROCESS_ID or SLURM; else None."""
    env = os.environ if env is None else env
    if env.get("COORDINATOR_ADDRESS"):
        missing = [k for k in ("NUM_PROCESSES", "PROCESS_ID") if k not in env]
        if missing:
            raise ValueError(f"COORDINATOR_ADDRESS={env['COORDINATOR_ADDRESS']} is set but {', '.join(missing)} "
                             "is not; set all three (or none) to start a multi-process run.")
        return {"coordinator_address": env["COORDINATOR_ADDRESS"], "num_processes": int(env["NUM_PROCESSES"]),
                "process_id": int(env["PROCESS_ID"])}
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        # JAX's own SLURM detection picks the coordinator (first node) and port.
        return {"slurm": True, "num_processes": int(env["SLURM_NTASKS"]), "process_id": int(env["SLURM_PROCID"])}
    return None


def _on_tpu_pod() -> bool:
    # TPU VMs of a multi-host slice list several workers; a single-host TPU needs no coordinator.
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_HOST_BOUNDS")
    return bool(hosts) and ("," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or
                            os.environ.get("TPU_HOST_BOUNDS", "1,1,1") not in ("1,1,1", "1,1,1,1"))


def maybe_initialize(local_device_ids=None) -> bool:
    """Start jax.distributed when the environment describes several processes; True if it did (idempotent)."""
    global _initialized
    if _initialized:
        return True
    cfg = cluster_env()
    if cfg is not None and "coordinator_address" in cfg:
        if os.environ.get("JAX_CPU_COLLECTIVES", "") or jax.config.jax_platforms == "cpu":
            # Cross-process collectives on CPU need an implementation; gloo ships with jaxlib.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(cfg["coordinator_address"], cfg["num_processes"], cfg["process_id"],
                                   local_device_ids=local_device_ids)
    elif cfg is not None or _on_tpu_pod():
        jax.distributed.initialize()  # SLURM / TPU pod: JAX detects coordinator, count and id itself
    else:
        return False
    _initialized = True
    print(f"[sciriff-jax] jax.distributed: process {jax.process_index()}/{jax.process_count()}, "
          f"{jax.local_device_count()} local / {jax.device_count()} global devices", flush=True)
    return True
