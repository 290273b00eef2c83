"""A decode shows its work as it goes (prompt tokens prefilled, tokens generated, an ETA bound) and its KV pool is
sized to the work, not to the machine."""
import jax
import numpy as np

from sciriff_jax.decoding import batcher, kv_memory
from sciriff_jax.decoding.generate import DecodeHooks, GenerationConfig, generate
from sciriff_jax.decoding.scheduler import WorkCount
from sciriff_jax.eval.progress import Progress
from sciriff_jax.model import LlamaConfig, init_params

CONFIG = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     dtype="float32")


def _progress(total, work_total):
    now, lines = [100.0], []
    p = Progress(total, "mix", every_s=10.0, clock=lambda: now[0], out=lambda line, flush: lines.append(line),
                 work_total=work_total)
    return p, now, lines


def test_the_first_device_call_prints_a_line_before_any_instance_finishes():
    p, now, lines = _progress(4, (2048, 400))
    work = WorkCount(prompt_tokens=512, prefill_calls=1)
    now[0] = 160.0  # compiling took a minute
    p.step(work)
    assert lines == ["[eval] mix: 0/4 instances, prompts 512/2,048 tokens prefilled, 0 new tokens, elapsed 01:00"]
    now[0] = 165.0
    p.step(work)  # within every_s: quiet
    assert len(lines) == 1


def test_the_eta_bounds_the_rest_of_the_prompts_and_the_token_budget_at_the_measured_rates():
    p, now, lines = _progress(4, (2048, 400))
    work = WorkCount(prompt_tokens=1024, generated=50, prefill_calls=2, decode_calls=2,
                     prefill_warm=(512, 2.0), decode_warm=(40, 4.0))  # 256 prompt tokens/s, 10 new tokens/s
    p.update(9)  # one instance finished with 9 tokens (+ its EOS): 100 of the budget is spent or no longer needed
    now[0] = 200.0
    p.step(work)
    # left: 1024 prompt tokens / 256 = 4 s; new tokens 400 - 100 - (50 - 9 - 1) = 260 / 10 = 26 s
    assert "prompts 1,024/2,048 tokens prefilled (256 tokens/s), 50 new tokens (10.0 tokens/s), ETA <= 00:30" in lines[-1]


def test_generate_reports_every_device_call_and_the_counts_add_up():
    params = init_params(CONFIG, jax.random.PRNGKey(0))
    prompts = [[3] * 70, [5, 6, 7], [9] * 20]
    seen = []
    hooks = DecodeHooks(on_step=lambda w: seen.append((w.prompt_tokens, w.generated, w.prefill_calls + w.decode_calls)),
                        log=None)
    generate(CONFIG, params, prompts, GenerationConfig(5, -1), batch_size=2, hooks=hooks)
    calls = [c for _, _, c in seen]
    assert calls == list(range(1, len(seen) + 1))  # once per device call, in order
    assert seen[-1][0] == sum(map(len, prompts)) and seen[-1][1] == 5 * len(prompts)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(seen, seen[1:]))


def test_the_pool_is_sized_to_the_work_within_an_eighth_not_to_the_free_memory():
    assert [kv_memory.round_pool(n) for n in (2, 8, 9, 17, 129, 1025)] == [2, 8, 10, 20, 160, 1280]
    per_token = kv_memory.bytes_per_token(CONFIG, np.float32)
    plan = kv_memory.plan_pool(CONFIG, [130, 70, 10], slots=32, page_size=64, dtype=np.float32,
                               budget_bytes=2 ** 40, shards=1)
    assert plan.concurrent_needed == 1 + 3 + 2 + 1 and plan.num_pages == 7
    assert plan.bytes == 7 * 64 * per_token
    assert "sized to the work: the 32 longest sequences (prompt + new tokens) at once need 7 pages" in plan.describe(32)
    assert batcher.PAGE_SIZE == 64


def test_a_cpu_default_budget_is_the_weights_and_says_so():
    cpu = jax.devices("cpu")[0]
    budget, note = kv_memory.default_budget(2 ** 30, cpu)
    free = kv_memory.free_device_bytes(cpu)
    assert budget == min(kv_memory.CPU_BUDGET_WEIGHTS * 2 ** 30, int(free * kv_memory.DEFAULT_BUDGET_SHARE))
    if budget == kv_memory.CPU_BUDGET_WEIGHTS * 2 ** 30:
        assert note.startswith(f"{kv_memory.CPU_BUDGET_WEIGHTS} x the weights on a CPU")
    small, _ = kv_memory.default_budget(1000, cpu)  # a tiny model still gets a usable cache
    assert small == min(kv_memory.CPU_BUDGET_MIN, int(free * kv_memory.DEFAULT_BUDGET_SHARE))


def test_the_kv_line_names_where_its_budget_came_from(capsys):
    params = init_params(CONFIG, jax.random.PRNGKey(0))
    generate(CONFIG, params, [[3, 4, 5]], GenerationConfig(2, -1))
    line = capsys.readouterr().out
    assert "sized to the work" in line and ("x the weights on a CPU" in line or "free host memory" in line)
