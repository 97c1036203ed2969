"""Device cost of one engine step per shape bucket: the figures the bucket ladder is tuned by.

Loads the model, builds the runner, and times ``ModelRunner.execute`` (the jitted step, sampler
included, plus its one device-to-host transfer) on synthetic batches: ``decode`` fills a bucket's
sequence rows with one token each at a given context length, ``prefill`` gives one sequence a
chunk of the bucket's full token count after a given number of earlier tokens. No scheduler,
no tokenizer, no HTTP: the engine's floor for each shape.

    python scripts/bench_step.py --config configs/smollm2.yaml \
        --decode 1:4,4:4,16:4,16:16 --decode-seqs 1,4,1,16 --context 192 --decode-steps 4 \
        --prefill 256:4 --prefill-context 0,256
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import int_list

from jaxserve.config import load_config
from jaxserve.engine.scheduler import SchedulerOutput
from jaxserve.engine.step_inputs import StepInputBuilder
from jaxserve.interfaces import StepInputs


def bucket_list(text: str) -> list[tuple[int, int]]:
    """'16:4,256:4' -> [(16, 4), (256, 4)] (tokens:seqs)."""
    pairs = []
    for item in text.split(","):
        t, s = item.split(":")
        pairs.append((int(t), int(s)))
    return pairs


def fill(inputs: StepInputs, q_lens: list[int], kv_lens: list[int], page_size: int,
         pages_per_seq: int) -> StepInputs:
    """Turn all-padding inputs into a batch: sequence i has q_lens[i] new tokens, kv_lens[i] keys."""
    offset = 0
    inputs.cu_q_lens[:] = sum(q_lens)
    inputs.cu_q_lens[0] = 0
    for i, (q, kv) in enumerate(zip(q_lens, kv_lens)):
        pages = np.arange(i * pages_per_seq, i * pages_per_seq + -(-kv // page_size), dtype=np.int32)
        pos = np.arange(kv - q, kv, dtype=np.int32)
        inputs.input_ids[offset:offset + q] = (pos * 7919) % 1000 + 100  # arbitrary ordinary ids
        inputs.positions[offset:offset + q] = pos
        inputs.slot_mapping[offset:offset + q] = pages[pos // page_size] * page_size + pos % page_size
        inputs.kv_lens[i] = kv
        inputs.page_table[i, :len(pages)] = pages
        offset += q
        inputs.cu_q_lens[i + 1] = offset
        inputs.logits_indices[i] = offset - 1
    inputs.num_seqs[0] = len(q_lens)
    return inputs


def synthetic_step(config, cfg, model, max_seqs: int, num_decode_steps: int = 1):
    """A runner with room for max_seqs full-length sequences, an input builder without ladders
    (the caller names each bucket), and pages per sequence: what ``fill`` needs. The runner
    splits steps into layer groups as the config does (``model.layers_per_call``), except for
    multi-step decoding, which needs the whole model in one program."""
    from jaxserve.runner.model_runner import ModelRunner

    page_size = config.cache.page_size
    max_len = config.model.max_model_len or cfg.max_position_embeddings
    pages_per_seq = -(-max_len // page_size)
    runner = ModelRunner(model, num_pages=max(config.cache.num_pages, max_seqs * pages_per_seq),
                         page_size=page_size, max_num_seqs=max_seqs, max_rows=max_seqs,
                         num_decode_steps=num_decode_steps,
                         layers_per_call=config.model.layers_per_call if num_decode_steps == 1 else None,
                         kv_dtype=config.cache.kv_dtype(config.model.weight_dtype
                                                       or str(model.dtype)))
    builder = StepInputBuilder(token_buckets=[], seq_buckets=[], page_size=page_size,
                               max_pages_per_seq=pages_per_seq, max_model_len=max_len,
                               eos_token_ids=cfg.eos_token_ids, vocab_size=cfg.vocab_size)
    return runner, builder, pages_per_seq


def time_call(runner, inputs: StepInputs, repeats: int) -> dict:
    runner.execute(inputs)  # compile (or load from the cache) and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.execute(inputs)
        times.append(time.perf_counter() - start)
    ms = 1e3 * statistics.median(times)
    return {"ms_per_call": ms, "ms_per_step": ms / inputs.num_steps, "min_ms": 1e3 * min(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/smollm2.yaml")
    p.add_argument("--decode", type=bucket_list, default=bucket_list("1:4,4:4,16:4,16:16"),
                   help="buckets (tokens:seqs) to time decode batches in")
    p.add_argument("--decode-seqs", type=int_list, default=None,
                   help="sequences per decode bucket (default: the bucket's token count, "
                        "capped at its sequence rows)")
    p.add_argument("--context", type=int, default=192, help="keys per decoding sequence")
    p.add_argument("--decode-steps", type=int, default=None,
                   help="steps per call of the multi-step decode (default: the config's "
                        "scheduler.num_decode_steps); decode is also timed at 1 step per call")
    p.add_argument("--prefill", type=bucket_list, default=bucket_list("64:4,256:4"))
    p.add_argument("--prefill-context", type=lambda text: int_list(text, minimum=0),
                   default=[0, 256],
                   help="earlier tokens of the sequence before the timed chunk")
    p.add_argument("--dtype", default=None, help="override model.dtype")
    p.add_argument("--weight-dtype", default=None, help="override model.weight_dtype")
    p.add_argument("--kv-dtype", default=None, help="override cache.dtype")
    p.add_argument("--layers-per-call", type=int, default=None,
                   help="override model.layers_per_call (0: the whole model in one program)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--result-json", default=None)
    args = p.parse_args()

    from jaxserve.builder import resolve_dtypes
    from jaxserve.models.llama_config import LlamaConfig
    from jaxserve.models.loader import load_model
    from jaxserve.pull import resolve_model
    from jaxserve.runner.attention import make_attention_backend
    from jaxserve.runner.compile_cache import enable_persistent_cache
    overrides = {}
    if args.layers_per_call is not None:
        overrides["model.layers_per_call"] = args.layers_per_call or None
        overrides["scheduler.num_decode_steps"] = 1
    for flag, field in ((args.kv_dtype, "cache.dtype"), (args.dtype, "model.dtype"),
                        (args.weight_dtype, "model.weight_dtype")):
        if flag is not None:
            overrides[field] = flag
    config, dtypes = resolve_dtypes(load_config(args.config, overrides))
    enable_persistent_cache()
    model_dir = resolve_model(config.model.path)
    cfg = LlamaConfig.from_hf(model_dir)
    dtype, weight_dtype = dtypes.activations, dtypes.weights
    backend = make_attention_backend(config.model.attention_backend)
    model = load_model(model_dir, backend, dtype, weight_dtype)
    cache, sched = config.cache, config.scheduler
    multi = args.decode_steps or sched.num_decode_steps
    max_seqs = max([s for _, s in args.decode + args.prefill] + [sched.max_num_seqs])
    runner, builder, pages_per_seq = synthetic_step(config, cfg, model, max_seqs, multi)
    rows = []
    print(f"{config.model.path} {dtype} ({weight_dtype} weights, "
          f"{dtypes.kv_cache} K/V: {dtypes.reason}) attention={backend.name}", flush=True)
    print(f"{'kind':8} {'bucket':>9} {'seqs':>4} {'q/seq':>5} {'context':>7} {'steps':>5} "
          f"{'ms/call':>8} {'ms/step':>8} {'tok/s':>8}", flush=True)

    def run(kind, bucket, q_lens, kv_lens, steps):
        inputs = builder.build(SchedulerOutput(scheduled=[], num_steps=steps), bucket)
        fill(inputs, q_lens, kv_lens, cache.page_size, pages_per_seq)
        row = {"kind": kind, "bucket": list(bucket), "seqs": len(q_lens), "q_per_seq": q_lens[0],
               "context": kv_lens[0] - q_lens[0], "steps": steps,
               **time_call(runner, inputs, args.repeats)}
        row["tok_per_s"] = 1e3 * sum(q_lens) / row["ms_per_step"]
        rows.append(row)
        print(f"{kind:8} {str(bucket[0]) + ':' + str(bucket[1]):>9} {row['seqs']:>4} "
              f"{row['q_per_seq']:>5} {row['context']:>7} {steps:>5} {row['ms_per_call']:>8.1f} "
              f"{row['ms_per_step']:>8.1f} {row['tok_per_s']:>8.1f}", flush=True)

    seqs = args.decode_seqs or [min(t, s) for t, s in args.decode]
    for (t, s), n in zip(args.decode, seqs):
        for steps in sorted({1, multi}):
            run("decode", (t, s), [1] * n, [args.context] * n, steps)
    for bucket in args.prefill:
        for before in args.prefill_context:
            run("prefill", bucket, [bucket[0]], [before + bucket[0]], 1)
    if args.result_json:
        Path(args.result_json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
