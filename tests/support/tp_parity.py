"""Run one model at several tensor-parallel sizes in one process and print what each produced.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \
        python -m tests.support.tp_parity --model DIR --tp 1,2,4

The flag must be set before jax is imported, so tests run this in a subprocess. For each size it
prints greedy tokens, seeded-sampling tokens and the sampled tokens' logprobs of the same prompts,
and the compilations after warm-up, as one JSON object keyed by the size.
"""

from __future__ import annotations

import argparse
import json

CHAT = [
    "What is the capital of France?", "Write a haiku about the sea.",
    "List three prime numbers.", "Explain recursion in one sentence.",
    "Translate 'good morning' into Spanish.", "What is 12 times 7?",
    "Name a colour of the rainbow.", "Say hello in three languages.",
]


def prompts(n: int) -> list[str]:
    """n varied prompts: short and long, repeated words and none (byte-level tokenizers)."""
    base = [f"prompt {i}: " + "abc " * (i * 5 + 1) + "xyz" * i for i in range(n)]
    base[-1] = "the quick brown fox jumps over the lazy dog; " * 5  # several prefill chunks
    return base


def run(model: str, tp: int, args: argparse.Namespace) -> dict:
    from jaxserve.llm import LLM
    from jaxserve.sampling_params import SamplingParams

    overrides = {"model.path": model, "model.attention_backend": args.backend,
                 "model.max_model_len": 512, "cache.num_pages": 256,
                 "scheduler.max_num_seqs": 8, "scheduler.max_num_batched_tokens": 64,
                 "scheduler.token_buckets": [8, 64], "scheduler.seq_buckets": [8],
                 "parallel.tensor_parallel_size": tp}
    if args.weight_dtype:
        overrides["model.weight_dtype"] = args.weight_dtype
    if args.layers_per_call:
        overrides |= {"model.layers_per_call": args.layers_per_call,
                      "scheduler.num_decode_steps": 1}
    llm = LLM(None, progress=False, **overrides)
    greedy = SamplingParams(temperature=0, max_tokens=args.tokens, logprobs=0,
                            ignore_eos=not args.chat)
    seeded = [SamplingParams(temperature=0.8, top_p=0.9, seed=100 + i, max_tokens=args.tokens,
                             ignore_eos=not args.chat) for i in range(args.prompts)]
    if args.chat:
        outs = llm.chat([[{"role": "user", "content": c}] for c in CHAT[:args.prompts]], greedy)
        sampled = []
    else:
        texts = prompts(args.prompts)
        outs = llm.generate(texts, greedy)
        sampled = [o.outputs[0].token_ids for o in llm.generate(texts, seeded)]
    scored = llm.generate(prompts(2), SamplingParams(temperature=0, max_tokens=1,
                                                      prompt_logprobs=2))
    mixed = [SamplingParams(temperature=(i % 3) * 0.5, max_tokens=4 + i % 13, seed=i,
                            n=1 + i % 2, logprobs=i % 4 if i % 5 == 0 else None,
                            prompt_logprobs=1 if i % 6 == 0 else None,
                            presence_penalty=0.3 if i % 7 == 0 else 0.0)
             for i in range(args.mixed)]
    mixed_prompts = [prompts(9)[i % 9][: 3 + (i * 17) % 200] for i in range(args.mixed)]
    if mixed:
        llm.generate(mixed_prompts, mixed)  # every bucket and sampler path, compiled at start
    return {
        "greedy": [o.outputs[0].token_ids for o in outs],
        "logprobs": [[lp.logprob for lp in o.outputs[0].logprobs] for o in outs],
        "seeded": sampled,
        "prompt_logprobs": [[e.logprob for e in o.prompt_logprobs[1:]] for o in scored],
        "compilations_after_warmup": llm.engine.runner.compilations_after_warmup,
        "kv_shape": list(llm.engine.runner.kv_caches[0].shape),
        "kv_shards": [list(s.data.shape) for s in llm.engine.runner.kv_caches[0].addressable_shards],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--tp", default="1,2")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--backend", default="reference")
    p.add_argument("--layers-per-call", type=int, default=None)
    p.add_argument("--weight-dtype", default=None)
    p.add_argument("--mixed", type=int, default=0, help="mixed requests run after the checks")
    p.add_argument("--chat", action="store_true", help="the chat prompts, stopping at eos")
    args = p.parse_args()
    results = {tp: run(args.model, int(tp), args) for tp in args.tp.split(",")}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
