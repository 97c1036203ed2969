"""Does constrained decoding slow down the requests beside it? Offline, on one engine:

    python scripts/bench_structured.py [--config configs/smollm2.yaml] [--batch 8] [--tokens 64]

Two batches of the same ``--batch`` chat prompts, greedy, ``--tokens`` output tokens each:

- ``none``: no request has a constraint;
- ``mixed``: the second half carries a JSON schema (an array of at least 200 strings, so no
  output can complete it, or stop, within the budget), the first half is unchanged.

Both batches therefore decode the same number of tokens per request. The figure of merit is the
output tokens/s of the unconstrained first half in ``mixed`` against the same requests in
``none``: what a neighbour's grammar costs a request that has none (the goal is < 10%). On a
shared machine wall time mostly measures the neighbours, so the script also reports the process's
CPU time per output token of each batch (the same tokens in both), and the host time of building
step inputs (where grammar masks are computed) per step.
The batches alternate ``--repeats`` times after a warm-up; medians are reported. A batch holding
a constrained request decodes one step per device call (the mask of each step needs the token
before it), so with ``scheduler.num_decode_steps`` > 1 the ``none`` batch also gets multi-step
decoding and ``mixed`` does not; ``--decode-steps 1`` isolates the cost of the masks alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from jaxserve.llm import LLM
from jaxserve.sampling_params import SamplingParams, StructuredOutputs

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["Name some rivers in Europe.", "List colours of the rainbow.",
             "Which animals live in the sea?", "Give me names for a cat.",
             "What can I cook with eggs?", "List programming languages.",
             "Name famous painters.", "Which fruits are red?"]
SCHEMA = {"type": "object",
          "properties": {"items": {"type": "array", "minItems": 200,
                                   "items": {"type": "string", "maxLength": 40}}},
          "required": ["items"]}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "smollm2.yaml"))
    p.add_argument("--batch", type=int, default=8, help="requests per batch (even)")
    p.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-steps", type=int, default=None,
                   help="scheduler.num_decode_steps (default: the config's); a batch with a "
                        "grammar always decodes one step per device call")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def run_batch(llm: LLM, prompts: list[list[int]], params: list[SamplingParams]) -> dict:
    """Runs one batch; per request the output tokens and the seconds until it finished."""
    engine = llm.engine
    build_s = [0.0]
    build = engine.inputs.build

    def timed_build(*args, **kwargs):  # the host work of a step, grammar masks included
        start = time.perf_counter()
        try:
            return build(*args, **kwargs)
        finally:
            build_s[0] += time.perf_counter() - start

    engine.inputs.build = timed_build
    try:
        ids = [f"bench-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
        cpu_start = time.process_time()
        start = time.perf_counter()
        for request_id, prompt, p in zip(ids, prompts, params):
            engine.add_request(request_id, engine.admission.admit(prompt, p))
        tokens = dict.fromkeys(ids, 0)
        texts = dict.fromkeys(ids, "")
        done: dict[str, float] = {}
        steps = engine.stats.steps
        while engine.has_unfinished_requests():
            for out in engine.step():
                tokens[out.request_id] = out.outputs[0].num_output_tokens
                texts[out.request_id] += out.outputs[0].text
                if out.finished:
                    done[out.request_id] = time.perf_counter() - start
    finally:
        engine.inputs.build = build
    return {"tokens": [tokens[i] for i in ids], "texts": [texts[i] for i in ids],
            "seconds": [done[i] for i in ids], "cpu_s": time.process_time() - cpu_start,
            "build_s": build_s[0], "steps": engine.stats.steps - steps}


def half_rate(run: dict, half: slice) -> float:
    """Output tokens/s of a group of requests: their tokens over the time the last one took."""
    return sum(run["tokens"][half]) / max(run["seconds"][half])


def main() -> None:
    args = parser().parse_args()
    assert args.batch % 2 == 0, "--batch must be even"
    overrides = {"scheduler.max_num_seqs": max(args.batch, 4)}
    if args.decode_steps is not None:
        overrides["scheduler.num_decode_steps"] = args.decode_steps
    llm = LLM(args.config, progress=False, **overrides)
    questions = (QUESTIONS * args.batch)[:args.batch]
    prompts = [llm.encode_chat([{"role": "user", "content": q}]) for q in questions]
    free = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    constrained = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True,
                                 structured_outputs=StructuredOutputs(json=SCHEMA))
    half = args.batch // 2
    batches = {"none": [free] * args.batch, "mixed": [free] * half + [constrained] * half}
    for params in batches.values():  # warm-up: compilation, the grammar tokenizer, the cache
        warm = run_batch(llm, prompts, params)
    constrained_text = warm["texts"][-1]
    assert constrained_text.startswith('{"items": ["'), constrained_text
    runs: dict[str, list[dict]] = {name: [] for name in batches}
    for _ in range(args.repeats):
        for name, params in batches.items():
            runs[name].append(run_batch(llm, prompts, params))

    first = slice(0, half)
    result = {"model": llm.info.model_name, "batch": args.batch, "tokens": args.tokens,
              "repeats": args.repeats,
              "num_decode_steps": llm.config.scheduler.num_decode_steps,
              "constrained_sample": constrained_text[:80]}
    for name, rs in runs.items():
        assert all(t == args.tokens for r in rs for t in r["tokens"]), "a request ended early"
        result[name] = {
            "unconstrained_half_tok_s": statistics.median(half_rate(r, first) for r in rs),
            "batch_tok_s": statistics.median(sum(r["tokens"]) / max(r["seconds"]) for r in rs),
            "host_build_ms_per_step": statistics.median(1e3 * r["build_s"] / r["steps"]
                                                        for r in rs),
            "cpu_ms_per_token": statistics.median(1e3 * r["cpu_s"] / sum(r["tokens"])
                                                  for r in rs),
            "steps": rs[0]["steps"],
        }
    none, mixed = result["none"], result["mixed"]
    result["unconstrained_half_slowdown_pct"] = 100 * (
        1 - mixed["unconstrained_half_tok_s"] / none["unconstrained_half_tok_s"])
    # the same tokens cost this much more CPU time in the mixed batch: the robust figure on a
    # shared machine, where wall time mostly measures the neighbours
    result["cpu_slowdown_pct"] = 100 * (1 - none["cpu_ms_per_token"] / mixed["cpu_ms_per_token"])
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model']}: batch {args.batch} ({half} with a JSON schema in 'mixed'), "
          f"{args.tokens} tokens each, num_decode_steps {result['num_decode_steps']}, "
          f"median of {args.repeats}")
    print(f"a constrained output begins: {result['constrained_sample']!r}")
    print(f"{'batch':>6} {'unconstrained half tok/s':>25} {'batch tok/s':>12} "
          f"{'CPU ms/token':>13} {'host ms/step':>13} {'steps':>6}")
    for name in batches:
        r = result[name]
        print(f"{name:>6} {r['unconstrained_half_tok_s']:>25.1f} {r['batch_tok_s']:>12.1f} "
              f"{r['cpu_ms_per_token']:>13.1f} {r['host_build_ms_per_step']:>13.2f} "
              f"{r['steps']:>6}")
    print(f"slowdown of the unconstrained half: {result['unconstrained_half_slowdown_pct']:.1f}% "
          f"(wall clock), {result['cpu_slowdown_pct']:.1f}% (CPU time per token)")


if __name__ == "__main__":
    main()
