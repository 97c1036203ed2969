"""The one prepared check for a machine with an NVIDIA GPU and no network: kernels, greedy parity,
speed against the HBM floor, and tensor parallelism when there are several GPUs.

    python scripts/gpu_check.py --out /tmp/gpu_check            # on the GPU machine
    python scripts/gpu_check.py --dry-run --out /tmp/gpu_check  # here: CPU, Pallas interpreted

1. the Pallas kernels (compiled, not interpreted) against the oracle on every test case;
2. greedy decoding with ``attention_backend: pallas`` against the XLA path (the CPU backend's jnp
   code, compiled by XLA for the GPU) on the tiny model and on a random-weight model of
   Llama-3.2-1B's shape;
3. the attention kernel and a whole decode step timed against the floor that HBM bandwidth
   (measured here) puts under the bytes they must read;
4. with two or more GPUs, tensor parallelism at every size that divides the model's heads,
   against one device;
5. the whole engine (``jaxserve.LLM``: scheduler, paged cache, async steps) on the 1B-shaped
   model: output tokens per second for waves of 1 and 64 requests.

Writes ``gpu_check.json`` and ``gpu_check.md`` into --out after every check, so a run cut short
still reports what finished; a check that raises is recorded as failed and the rest still run.
Exits non-zero when a check fails.
The models are written locally (no hub); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Llama-3.2-1B's shape; --dry-run shrinks it so the CPU finishes in seconds
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                max_position_embeddings=2048, rope_theta=500000.0)
LLAMA_1B_DRY = dict(LLAMA_1B, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                    num_attention_heads=8, num_key_value_heads=2, head_dim=32, vocab_size=2048)


def best_ms(fn, repeats: int = 10) -> float:
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def hbm_bandwidth(dry_run: bool) -> float:
    """Bytes per second a jitted reduction reads from device memory."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((64 if dry_run else 1024) * 2**20 // 4, jnp.float32)
    ms = best_ms(lambda: jax.jit(jnp.sum)(x))
    return x.nbytes / (ms / 1e3)


def check_kernels(interpret: bool) -> dict:
    import jax.numpy as jnp
    import numpy as np

    from jaxserve.kernels.ragged_paged_attention import (
        oracle,
        ragged_paged_attention,
        update_kv_pages,
    )
    from tests.support.attention_inputs import CASES, CONFIGS, check_kv_write, make_inputs, rel_err

    rows, ok = [], True
    for name, cfg in CONFIGS.items():
        for case, (q_lens, kv_lens, seed) in CASES.items():
            args, num_real = make_inputs(cfg, q_lens, kv_lens, seed=seed)
            out = ragged_paged_attention(*args, sm_scale=cfg.head_dim**-0.5, block_q=cfg.block_q,
                                         pages_per_block=cfg.pages_per_block,
                                         interpret=interpret)
            ref = oracle.ragged_paged_attention(*args, sm_scale=cfg.head_dim**-0.5)
            err = rel_err(np.asarray(out)[:num_real], ref[:num_real])
            passed = bool(np.isfinite(np.asarray(out, np.float32)[:num_real]).all()
                          and err < cfg.tol)
            ok &= passed
            rows.append({"config": name, "case": case, "rel_err": err, "ok": passed})
    kv_ok = True
    for dtype in (jnp.float32, jnp.bfloat16):
        try:
            check_kv_write(functools.partial(update_kv_pages, interpret=interpret), dtype)
        except AssertionError:
            kv_ok = False
    return {"ok": ok and kv_ok, "cases": rows, "kv_write_exact": kv_ok}


def greedy_parity(model_dir: Path, prompts: list[list[int]], tokens: int, dtype: str) -> dict:
    from jaxserve.llm import LLM
    from jaxserve.sampling_params import SamplingParams

    outputs = {}
    for backend in ("pallas", "reference"):
        llm = LLM(None, progress=False, **{
            "model.path": str(model_dir), "model.attention_backend": backend,
            "model.dtype": dtype, "model.max_model_len": 512, "cache.num_pages": 512,
            "scheduler.max_num_seqs": 8, "scheduler.max_num_batched_tokens": 256,
            "scheduler.token_buckets": [8, 64, 256], "scheduler.seq_buckets": [8]})
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
        outputs[backend] = [o.outputs[0].token_ids for o in llm.generate_ids(prompts, params)]
        del llm
    same = [a == b for a, b in zip(outputs["pallas"], outputs["reference"])]
    first = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
             for a, b in zip(outputs["pallas"], outputs["reference"])]
    # a random model's logits are nearly flat, so bfloat16 rounding flips ties: only float32 must agree
    ok = all(same) if dtype == "float32" else True
    return {"ok": ok, "dtype": dtype, "identical": sum(same), "prompts": len(same), "first_difference": first}


def time_attention(interpret: bool, bandwidth: float, dry_run: bool) -> dict:
    """A decode batch of Llama-3.2-1B's attention: 16 sequences of 1,024 cached tokens."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxserve.kernels.ragged_paged_attention import ragged_paged_attention

    seqs, ctx, hq, hkv, d, ps = (4, 64, 8, 2, 32, 16) if dry_run else (16, 1024, 32, 8, 64, 16)
    pages_per_seq = ctx // ps
    rng = np.random.default_rng(0)
    kv = jnp.asarray(rng.standard_normal((seqs * pages_per_seq, 2, hkv, ps, d)), jnp.bfloat16)
    q = jnp.asarray(rng.standard_normal((seqs, hq, d)), jnp.bfloat16)
    page_table = jnp.arange(seqs * pages_per_seq, dtype=jnp.int32).reshape(seqs, pages_per_seq)
    kv_lens = jnp.full(seqs, ctx, jnp.int32)
    cu = jnp.arange(seqs + 1, dtype=jnp.int32)
    num = jnp.array([seqs], jnp.int32)
    fn = jax.jit(lambda *a: ragged_paged_attention(*a, sm_scale=d**-0.5, interpret=interpret))
    ms = best_ms(lambda: fn(q, kv, kv_lens, page_table, cu, num), repeats=3 if dry_run else 20)
    floor = 1e3 * kv.nbytes / bandwidth
    return {"seqs": seqs, "context": ctx, "ms": ms, "floor_ms": floor, "floor_fraction": floor / ms}


def time_decode_step(model_dir: Path, bandwidth: float, dry_run: bool) -> dict:
    """A lone decode step and a 16-row one of the whole model, bfloat16, against its weights'
    bytes read once at the measured bandwidth."""
    import jax

    from jaxserve.config import load_config
    from jaxserve.engine.step_inputs import StepInputBuilder
    from jaxserve.models.loader import load_model
    from jaxserve.runner.attention import make_attention_backend
    from jaxserve.runner.model_runner import ModelRunner

    config = load_config(None, {"scheduler.token_buckets": [1, 16], "scheduler.seq_buckets": [16],
                                "scheduler.max_num_seqs": 16,
                                "scheduler.max_num_batched_tokens": 16})
    model = load_model(model_dir, make_attention_backend("pallas"), "bfloat16")
    runner = ModelRunner(model, num_pages=256, page_size=16, max_num_seqs=16, max_rows=16)
    builder = StepInputBuilder.for_config(config, max_model_len=1024,
                                          vocab_size=model.cfg.vocab_size, eos_token_ids=(2,))
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(runner.state))
    out = {"weight_bytes": weight_bytes, "floor_ms": 1e3 * weight_bytes / bandwidth}
    for bucket in ((1, 1), (16, 16)):
        inputs = builder.padding_inputs(bucket)
        runner.execute(inputs)  # compiles
        out[f"decode_{bucket[1]}_ms"] = best_ms(lambda: runner.launch(inputs),
                                                repeats=3 if dry_run else 20)
    out["floor_fraction_1"] = out["floor_ms"] / out["decode_1_ms"]
    return out


def tensor_parallel(model_dir: Path, devices: int) -> dict:
    from tests.support.tp_parity import run

    sizes = [n for n in (2, 4, 8) if n <= devices and 8 % n == 0]
    if not sizes:
        return {"ok": True, "skipped": f"{devices} device(s)"}
    args = SimpleNamespace(backend="auto", layers_per_call=None, weight_dtype=None, chat=False,
                           prompts=4, tokens=16, mixed=0)
    one = run(str(model_dir), 1, args)
    rows = {}
    for n in sizes:
        got = run(str(model_dir), n, args)
        rows[n] = {"greedy_same": got["greedy"] == one["greedy"],
                   "seeded_same": got["seeded"] == one["seeded"],
                   "compilations_after_warmup": got["compilations_after_warmup"]}
    ok = all(r["greedy_same"] and r["compilations_after_warmup"] == 0 for r in rows.values())
    return {"ok": ok, "sizes": rows}


def engine_throughput(model_dir: Path, dry_run: bool) -> dict:
    """Output tok/s of ``LLM.generate_ids`` on random-token prompts, ignore_eos, greedy."""
    import numpy as np

    from jaxserve.llm import LLM
    from jaxserve.sampling_params import SamplingParams

    waves, in_len, out_len = ((1, 4), 16, 8) if dry_run else ((1, 64), 128, 128)
    started = time.perf_counter()
    llm = LLM(None, progress=False, **{
        "model.path": str(model_dir), "model.attention_backend": "auto", "model.dtype": "bfloat16",
        "model.max_model_len": 1024, "cache.num_pages": 2048,
        "scheduler.max_num_seqs": max(waves), "scheduler.max_num_batched_tokens": 2048,
        "scheduler.token_buckets": [max(waves), 256, 2048],
        "scheduler.seq_buckets": sorted({1, max(waves)})})
    out = {"input_len": in_len, "output_len": out_len, "ready_s": time.perf_counter() - started}
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True)
    for wave in waves:
        prompts = [rng.integers(3, 2000, in_len).tolist() for _ in range(wave)]
        llm.generate_ids(prompts[:1], SamplingParams(temperature=0, max_tokens=2))  # warm
        start = time.perf_counter()
        done = llm.generate_ids(prompts, params)
        seconds = time.perf_counter() - start
        tokens = sum(len(o.outputs[0].token_ids) for o in done)
        out[f"wave_{wave}"] = {"output_tokens": tokens, "seconds": seconds,
                               "output_tok_s": tokens / seconds}
    del llm
    return out


def markdown(report: dict) -> str:
    k, a, d = report.get("kernels"), report.get("attention"), report.get("decode_step")
    result = {True: "pass", False: "FAIL"}.get(report.get("ok"), "running")
    lines = [f"# gpu_check ({'dry run, ' if report['dry_run'] else ''}{report['device']})", "",
             f"jax {report['jax']}, {report['num_devices']} device(s); HBM read "
             f"{report['bandwidth_gb_s']:.0f} GB/s. Result: **{result}**.",
             "", "| check | result |", "|---|---|"]
    if k:
        lines.append(f"| kernels vs oracle ({len(k['cases'])} cases) | "
                     f"{sum(c['ok'] for c in k['cases'])} pass, max rel err "
                     f"{max(c['rel_err'] for c in k['cases']):.1e}; "
                     f"K/V write exact: {k['kv_write_exact']} |")
    for name in ("greedy_tiny", "greedy_1b", "greedy_1b_bf16"):
        g = report.get(name)
        if g:
            lines.append(f"| {name} ({g.get('dtype')}): pallas vs XLA path | "
                         f"{g['identical']}/{g['prompts']} "
                         f"identical; first differences {g['first_difference']} |")
    if a:
        lines.append(f"| attention, {a['seqs']} x {a['context']} tokens | {a['ms']:.3f} ms, "
                     f"floor {a['floor_ms']:.3f} ms ({100 * a['floor_fraction']:.0f}%) |")
    if d:
        lines.append(f"| decode step, 1B shape, bf16 | 1 row {d['decode_1_ms']:.2f} ms, 16 rows "
                     f"{d['decode_16_ms']:.2f} ms; floor {d['floor_ms']:.2f} ms "
                     f"({100 * d['floor_fraction_1']:.0f}%) |")
    tp = report.get("tensor_parallel")
    if tp:
        lines.append(f"| tensor parallel | {json.dumps(tp.get('sizes', tp.get('skipped')))} |")
    e = report.get("engine")
    if e and "wave_1" in e:
        waves = ", ".join(f"{key[5:]} at once {v['output_tok_s']:.0f} tok/s"
                          for key, v in e.items() if key.startswith("wave_"))
        lines.append(f"| engine, 1B shape, bf16, {e['input_len']} in / {e['output_len']} out | "
                     f"{waves}; ready in {e['ready_s']:.0f} s |")
    for name, error in report.get("errors", {}).items():
        lines.append(f"| {name} | raised: {error} |")
    return "\n".join(lines) + "\n"


def write(out: Path, report: dict) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_check.md").write_text(markdown(report))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", default=None, help="comma-separated checks to run (default: all)")
    p.add_argument("--dry-run", action="store_true",
                   help="on CPU: the Pallas kernels interpreted, the 1B model shrunk")
    args = p.parse_args()
    import jax

    from jaxserve.checkpoints.tiny import write_tiny_model
    from jaxserve.pull import resolve_model

    args.out.mkdir(parents=True, exist_ok=True)
    on_gpu = jax.default_backend() == "gpu"
    if not on_gpu and not args.dry_run:
        sys.exit("gpu_check: no GPU here (jax sees %s); use --dry-run" % jax.default_backend())
    interpret = not on_gpu
    started = time.perf_counter()
    bandwidth = hbm_bandwidth(args.dry_run)
    report = {"dry_run": args.dry_run, "device": str(jax.devices()[0].device_kind),
              "jax": jax.__version__, "num_devices": len(jax.devices()),
              "bandwidth_gb_s": bandwidth / 1e9}

    def section(name: str, fn, *fn_args) -> None:
        if args.only and name not in args.only.split(","):
            return
        try:
            report[name] = fn(*fn_args)
        except Exception as exc:  # one broken check must not hide the others' figures
            traceback.print_exc()
            report.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:300]
        write(args.out, report)

    section("kernels", check_kernels, interpret)
    prompts = [[(7 * i + j) % 250 + 3 for j in range(5 + 9 * i)] for i in range(6)]
    if on_gpu:  # the serving path needs the kernels compiled; interpreted it takes minutes
        section("greedy_tiny", greedy_parity, resolve_model("tiny-random-llama"), prompts, 24,
                "float32")
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "llama-1b-shape"
        write_tiny_model(big, "llama", **(LLAMA_1B_DRY if args.dry_run else LLAMA_1B))
        if on_gpu:
            section("greedy_1b", greedy_parity, big, prompts, 16, "float32")
            section("greedy_1b_bf16", greedy_parity, big, prompts, 16, "bfloat16")
        section("attention", time_attention, interpret, bandwidth, args.dry_run)
        section("decode_step", time_decode_step, big, bandwidth, args.dry_run)
        if on_gpu or args.dry_run:
            section("engine", engine_throughput, big, args.dry_run)
        tp_model = Path(tmp) / "llama-8q"
        write_tiny_model(tp_model, "llama", num_attention_heads=8, num_key_value_heads=8,
                         head_dim=16, hidden_size=128)
        section("tensor_parallel", tensor_parallel, tp_model, len(jax.devices()))
    checks = [report[k]["ok"] for k in ("kernels", "greedy_tiny", "greedy_1b", "tensor_parallel")
              if k in report]
    report["ok"] = all(checks) and not report.get("errors")
    report["seconds"] = time.perf_counter() - started
    write(args.out, report)
    print(markdown(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
