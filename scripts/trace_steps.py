"""What the engine's steps were while a server ran: bucket, decodes and prefill tokens per step.

`serve` runs `jaxserve run` with every finished step appended to a JSON-lines file; point a load
generator at it (``scripts/bench_serving.py``), stop it, then `summary` groups the steps by bucket
and kind with their count and time. The time of a step is the gap since the step before it was
postprocessed: with async scheduling and a busy engine that is the device time of the step.

    python scripts/trace_steps.py serve --trace /tmp/steps.jsonl -- --config configs/smollm2.yaml
    python scripts/trace_steps.py summary /tmp/steps.jsonl

This is how the 512 in / 32 out workload was read in docs/performance.md: per round of four
prompts, ~8 chunk steps of 130-185 ms, 4 tail steps of ~50 ms and ~27 four-decode steps of ~28 ms.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import defaultdict


def serve(trace: str, jaxserve_args: list[str]) -> None:
    from jaxserve.cli import main as jaxserve_main
    from jaxserve.engine import llm_engine

    out = open(trace, "w")  # noqa: SIM115 (open for the server's whole life)
    postprocess = llm_engine.LLMEngine.postprocess
    add_request = llm_engine.LLMEngine.add_request

    def traced(self, sched, inputs, result):
        decodes = sum(1 for s in sched.scheduled if s.num_new_tokens == 1)
        prefill = sum(s.num_new_tokens for s in sched.scheduled if s.num_new_tokens > 1)
        outputs = postprocess(self, sched, inputs, result)
        out.write(json.dumps({"t": time.perf_counter(), "bucket": list(inputs.bucket),
                              "decodes": decodes, "prefill": prefill,
                              "waiting": len(self.scheduler.waiting),
                              "finished": sum(o.finished for o in outputs)}) + "\n")
        out.flush()
        return outputs

    def traced_add(self, *args, **kwargs):  # when the engine thread took a request in
        out.write(json.dumps({"t": time.perf_counter(), "added": 1}) + "\n")
        return add_request(self, *args, **kwargs)

    llm_engine.LLMEngine.postprocess = traced
    llm_engine.LLMEngine.add_request = traced_add
    jaxserve_main(["run", *jaxserve_args])


def summary(trace: str) -> None:
    with open(trace) as f:
        events = [json.loads(line) for line in f]
    steps = [e for e in events if "bucket" in e]
    added = [e["t"] for e in events if e.get("added")]
    finished = [e["t"] for e in steps for _ in range(e.get("finished", 0))]
    groups: dict[tuple, list[float]] = defaultdict(list)
    for prev, step in itertools.pairwise(steps):
        kind = "prefill" if step["prefill"] else "decode"
        groups[(tuple(step["bucket"]), kind, step["decodes"])].append(1e3 * (step["t"] - prev["t"]))
    total = sum(sum(ms) for ms in groups.values())
    print(f"{'bucket':>10} {'kind':>8} {'decodes':>7} {'steps':>6} {'ms':>9} {'ms/step':>8} {'share':>6}")
    for (bucket, kind, decodes), ms in sorted(groups.items()):
        print(f"{bucket[0]:>5}:{bucket[1]:<4} {kind:>8} {decodes:>7} {len(ms):>6} {sum(ms):>9.0f} "
              f"{sum(ms) / len(ms):>8.1f} {sum(ms) / total:>6.1%}")
    print(f"{len(steps) - 1} steps, {total / 1e3:.2f} s (gaps with no request in flight included)")
    # in a closed loop each finished request is replaced: how long until the engine takes one in
    gaps = [1e3 * (next((a for a in added if a > t), t) - t) for t in finished]
    gaps = [g for g in gaps if g > 0]
    if gaps:
        print(f"{len(gaps)} requests finished with another taken in after them: "
              f"{sum(gaps) / len(gaps):.0f} ms on average until it was (max {max(gaps):.0f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="jaxserve run, tracing its steps")
    s.add_argument("--trace", required=True, help="JSON-lines file to write")
    s.add_argument("jaxserve_args", nargs=argparse.REMAINDER, help="after --: jaxserve run's arguments")
    m = sub.add_parser("summary", help="steps grouped by bucket and kind")
    m.add_argument("trace")
    args = p.parse_args()
    if args.cmd == "serve":
        rest = args.jaxserve_args[1:] if args.jaxserve_args[:1] == ["--"] else args.jaxserve_args
        serve(args.trace, rest)
    else:
        summary(args.trace)


if __name__ == "__main__":
    main()
