"""Throughput of ``jaxserve.LLM`` without HTTP: the engine's cost apart from the server's.

The workload is bench_serving.py's (random-token prompts of a fixed length, a fixed output length
with ignore_eos, temperature 0), given to ``LLM.generate_ids`` in waves of ``batch`` prompts, so
a wave of 1, 4 or 16 matches a closed loop at that concurrency without the refill between
requests. Also reports time to ready (building the LLM: load, compile or cache hit) and the
process's peak RSS.

    python scripts/bench_offline.py --config configs/smollm2.yaml --batch 1,4,16 \
        --input-len 128 --output-len 128 --num-prompts 16 --result-json offline.json

With ``--prompt-logprobs K`` each wave size runs twice, on the same prompts: as above, then with
every request asking for its prompt logprobs and their top K (a level with ``prompt_logprobs``:
K); comparing the first rows with a run of the main branch shows what the requests that do not
ask pay, the second what asking costs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import int_list, load_tokenizer, random_prompts


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_batch(llm, params, prompts: list[list[int]], batch: int, max_duration: float
              ) -> dict[str, Any]:
    """Generate `prompts` in waves of `batch`; stop starting waves after max_duration."""
    start = time.perf_counter()
    input_tokens = output_tokens = completed = 0
    for i in range(0, len(prompts), batch):
        if time.perf_counter() - start > max_duration:
            break
        wave = prompts[i:i + batch]
        for out in llm.generate_ids(wave, params):
            completed += 1
            input_tokens += len(out.prompt_token_ids)
            output_tokens += sum(len(c.token_ids) for c in out.outputs)
    duration = time.perf_counter() - start
    return {
        "batch": batch, "completed": completed, "duration_s": duration,
        "total_input_tokens": input_tokens, "total_output_tokens": output_tokens,
        "request_throughput": completed / duration,
        "output_throughput": output_tokens / duration,
        "total_token_throughput": (input_tokens + output_tokens) / duration,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/smollm2.yaml")
    p.add_argument("--tokenizer", default=None, help="default: the config's model folder")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--num-prompts", type=int, default=16, help="per batch size")
    p.add_argument("--batch", type=int_list, default=[1, 4, 16], help="wave sizes, e.g. 1,4,16")
    p.add_argument("--max-duration", type=float, default=300.0, help="per batch size, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-logprobs", type=int, default=None, metavar="K",
                   help="also run each wave size with every request asking prompt_logprobs=K")
    p.add_argument("--result-json", type=Path)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    start = time.perf_counter()
    import jaxserve

    llm = jaxserve.LLM(args.config)
    time_to_ready = time.perf_counter() - start
    print(f"time to ready: {time_to_ready:.1f} s (import, load, compile or compile-cache hit)")
    tokenizer = load_tokenizer(args.tokenizer or str(llm.config.model.path))
    params = jaxserve.SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    variants = [params]
    if args.prompt_logprobs is not None:
        variants.append(jaxserve.SamplingParams(temperature=0.0, max_tokens=args.output_len,
                                                ignore_eos=True,
                                                prompt_logprobs=args.prompt_logprobs))
    warmup = random_prompts(tokenizer, max(args.batch), args.input_len, args.seed + 999, False)
    for batch in sorted(set(args.batch)):  # every batch shape once, so no level pays a compile
        for variant in variants:
            llm.generate_ids([p.prompt for p in warmup[:batch]], variant)
    levels = []
    for i, batch in enumerate(args.batch):
        prompts = random_prompts(tokenizer, args.num_prompts, args.input_len, args.seed + i, False)
        for variant in variants:
            level = run_batch(llm, variant, [p.prompt for p in prompts], batch, args.max_duration)
            level["prompt_logprobs"] = variant.prompt_logprobs
            asks = "" if variant.prompt_logprobs is None else \
                f" (prompt_logprobs={variant.prompt_logprobs})"
            print(f"batch {batch}{asks}: {level['completed']} requests in "
                  f"{level['duration_s']:.1f} s, output {level['output_throughput']:.1f} tok/s, "
                  f"total {level['total_token_throughput']:.1f} tok/s, "
                  f"{level['request_throughput']:.2f} req/s")
            levels.append(level)
    compilations = getattr(llm.engine.runner, "compilations_after_warmup", None)
    result = {
        "config": args.config, "input_len": args.input_len, "output_len": args.output_len,
        "num_prompts": args.num_prompts, "time_to_ready_s": time_to_ready,
        "peak_rss_bytes": peak_rss_bytes(), "compilations_after_warmup": compilations,
        "loadavg": list(os.getloadavg()), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "levels": levels,
    }
    print(f"peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB; "
          f"compilations after warm-up: {compilations}; load average {result['loadavg']}")
    if args.result_json:
        args.result_json.parent.mkdir(parents=True, exist_ok=True)
        args.result_json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
