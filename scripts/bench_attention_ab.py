"""A/B two attention implementations on the model's full engine step, in one process.

On a shared 2-core machine two separate runs of ``bench_step.py`` drift by 10-50% between
minutes, more than most changes are worth. Here both variants are built side by side (same
weights, same inputs, each its own compiled step) and their calls alternate, so drift hits both
alike and the ratio B/A is what to read.

A variant is a Python file defining ``cpu_ragged_paged_attention`` and ``cpu_update_kv_pages``
(``ref_...`` in commits before the CPU backend's rename) with the CPU backend's signatures (and,
optionally, ``kv_storage_dtype``; by default the CPU backend's: bfloat16 K/V as uint16 bits), e.g.
the CPU backend of another commit (the rest of the package, ``cpu_prefill.py`` and ``tuned.py``
included, is imported from this tree):

    git show HEAD~1:jaxserve/kernels/ragged_paged_attention/cpu_attention.py > /tmp/old.py
    python scripts/bench_attention_ab.py /tmp/old.py \
        jaxserve/kernels/ragged_paged_attention/cpu_attention.py \
        --cases 1:1:1:1:192,16:16:16:1:448,256:4:1:256:256
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import fill, synthetic_step

from jaxserve.builder import resolve_dtypes
from jaxserve.config import load_config
from jaxserve.engine.scheduler import SchedulerOutput
from jaxserve.kernels.ragged_paged_attention.kv_storage import kv_storage_dtype


def load_variant(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_cases(text: str) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """'tokens:seqs:sequences:queries:context,...' -> bucket (tokens, seqs), then a batch of
    `sequences` sequences with `queries` new tokens after `context` earlier keys each. A mixed
    batch names its groups as `sequences`x`queries`@`context` joined by '+', e.g. the steps of a
    512-token prompt beside decodes: '256:16:2x1@540+1x4@508+1x250@0'."""
    cases = []
    for item in text.split(","):
        fields = item.split(":")
        try:
            if len(fields) == 5:
                tokens, seqs, n, q, context = (int(x) for x in fields)
                groups = [(n, q, context)]
            elif len(fields) == 3:
                tokens, seqs = int(fields[0]), int(fields[1])
                groups = [tuple(int(x) for x in re.fullmatch(r"(\d+)x(\d+)@(\d+)", g).groups())
                          for g in fields[2].split("+")]
            else:
                raise ValueError
        except (ValueError, AttributeError):
            raise argparse.ArgumentTypeError(
                f"bad case {item!r}: want tokens:seqs:n:q:context or tokens:seqs:NxQ@C+...") from None
        n_seqs = sum(n for n, _, _ in groups)
        n_tokens = sum(n * q for n, q, _ in groups)
        if min(tokens, seqs) < 1 or any(n < 1 or q < 1 or c < 0 for n, q, c in groups):
            raise argparse.ArgumentTypeError(f"bad case {item!r}: counts must be positive")
        if n_seqs > seqs or n_tokens > tokens:
            raise argparse.ArgumentTypeError(f"case {item!r} does not fit its bucket")
        cases.append((tokens, seqs, groups))
    return cases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="variant A: a .py file with the reference's two functions")
    p.add_argument("b", help="variant B")
    p.add_argument("--cases", type=parse_cases,
                   default=parse_cases("1:1:1:1:192,16:4:4:1:192,16:16:16:1:192,256:4:1:256:256"))
    p.add_argument("--config", default="configs/smollm2.yaml")
    p.add_argument("--rounds", type=int, default=20, help="alternating calls per variant and case")
    p.add_argument("--kv-dtypes", default=None,
                   help="A's and B's K/V cache dtype, e.g. float32,bfloat16 (default: the config's)")
    args = p.parse_args()

    from jaxserve.models.attention_metadata import AttentionBackend
    from jaxserve.models.llama_config import LlamaConfig
    from jaxserve.models.loader import load_model
    from jaxserve.pull import resolve_model
    from jaxserve.runner.compile_cache import enable_persistent_cache

    config, _ = resolve_dtypes(load_config(args.config))
    kv_dtypes = (args.kv_dtypes or f"{config.cache.dtype},{config.cache.dtype}").split(",")
    enable_persistent_cache()
    model_dir = resolve_model(config.model.path)
    cfg = LlamaConfig.from_hf(model_dir)
    max_seqs = max(seqs for _, seqs, _ in args.cases)
    runners = []
    for i, (path, kv_dtype) in enumerate(zip((args.a, args.b), kv_dtypes, strict=True)):
        variant = load_variant(path, f"attention_variant_{i}")
        prefix = "cpu" if hasattr(variant, "cpu_ragged_paged_attention") else "ref"
        backend = AttentionBackend("reference",
                                   getattr(variant, f"{prefix}_ragged_paged_attention"),
                                   getattr(variant, f"{prefix}_update_kv_pages"),
                                   getattr(variant, "kv_storage_dtype", kv_storage_dtype))
        model = load_model(model_dir, backend, config.model.dtype, config.model.weight_dtype)
        variant_config, _ = resolve_dtypes(load_config(args.config, {"cache.dtype": kv_dtype}))
        runner, builder, pages_per_seq = synthetic_step(variant_config, cfg, model, max_seqs)
        runners.append(runner)
    page_size = config.cache.page_size
    print(f"A = {args.a} ({kv_dtypes[0]} K/V)\nB = {args.b} ({kv_dtypes[1]} K/V)")
    print(f"{'bucket':>7} {'batch':<28} {'A ms':>7} {'B ms':>7} {'B/A':>6}")
    for tokens, seqs, groups in args.cases:
        inputs = builder.build(SchedulerOutput(scheduled=[], num_steps=1), (tokens, seqs))
        q_lens = [q for n, q, _ in groups for _ in range(n)]
        kv_lens = [c + q for n, q, c in groups for _ in range(n)]
        fill(inputs, q_lens, kv_lens, page_size, pages_per_seq)
        for runner in runners:  # compile (or load) and warm up
            runner.execute(inputs)
        times = ([], [])
        for _ in range(args.rounds):
            for runner, out in zip(runners, times):
                start = time.perf_counter()
                runner.execute(inputs)
                out.append(time.perf_counter() - start)
        a, b = (1e3 * statistics.median(t) for t in times)
        batch = "+".join(f"{n}x{q}@{c}" for n, q, c in groups)
        print(f"{tokens:>3}:{seqs:<3} {batch:<28} {a:>7.1f} {b:>7.1f} {b / a:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
