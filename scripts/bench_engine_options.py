"""A/B the engine options of issue 6 in one process: decode and prefill time per token on
SmolLM2, for each variant of a config (multi-step decode on/off, float32/bfloat16).

    python scripts/bench_engine_options.py --variants "num_decode_steps=1" "num_decode_steps=4" \
        "dtype=bfloat16" "async_scheduling=false"

Each variant builds its own engine (compiles its buckets), then runs closed waves of greedy
requests with random-token prompts and ignore_eos. Figures are medians of --repeats waves.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from jaxserve import SamplingParams
from jaxserve.llm import LLM

FIELDS = {"num_decode_steps": "scheduler.num_decode_steps", "dtype": "model.dtype",
          "weight_dtype": "model.weight_dtype",
          "attention_backend": "model.attention_backend",
          "async_scheduling": "scheduler.async_scheduling"}


# (name, requests in the wave, prompt tokens, output tokens); prefill rows count prompt tokens
WORKLOADS = (("decode c=1", 1, 16, 33), ("decode c=16", 16, 16, 33), ("prefill 4x512", 4, 512, 1))


def parse_variant(text: str) -> dict:
    overrides = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        if value in ("true", "false"):
            overrides[FIELDS.get(key, key)] = value == "true"
        else:
            overrides[FIELDS.get(key, key)] = int(value) if value.isdigit() else value
    return overrides


def wave(llm: LLM, batch: int, input_len: int, output_len: int, rng) -> float:
    prompts = [rng.integers(1000, 20000, input_len).tolist() for _ in range(batch)]
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    start = time.perf_counter()
    llm.generate_ids(prompts, params)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/smollm2.yaml")
    ap.add_argument("--variants", nargs="+", default=["num_decode_steps=1", "num_decode_steps=4"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"| variant | workload | seconds (median of {args.repeats}) | tok/s |")
    print("|---|---|---|---|", flush=True)
    for variant in args.variants:
        llm = LLM(args.config, progress=False, **parse_variant(variant))
        wave(llm, 1, 16, 8, rng)  # warm the host paths
        for name, batch, inp, out in WORKLOADS:
            times = [wave(llm, batch, inp, out, rng) for _ in range(args.repeats)]
            t = statistics.median(times)
            tokens = batch * (out - 1) if out > 1 else batch * inp
            print(f"| {variant} | {name} | {t:.2f} | {tokens / t:.1f} |", flush=True)
        del llm


if __name__ == "__main__":
    main()
