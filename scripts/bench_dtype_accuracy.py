"""What bfloat16 weights or K/V cost in accuracy: teacher-forced next-token distributions of a
model in float32 and in another dtype, over this repository's own docs as natural English text.

    python scripts/bench_dtype_accuracy.py --config configs/smollm2.yaml --dtype bfloat16
    python scripts/bench_dtype_accuracy.py --dtype float32 --weight-dtype bfloat16  # mixed
    python scripts/bench_dtype_accuracy.py --dtype float32 --kv-dtype bfloat16 --walk-all

--walk-all sends every key through the page walk, the path decode steps take (with bfloat16 K/V
its products take bfloat16 inputs), instead of a prefill's dense product over its own keys.

Reports, over every predicted position: perplexity in each dtype, top-1 agreement, mean and
p99 KL(float32 || dtype), and the largest logit difference. Speed is bench_engine_options.py's
concern ("dtype=bfloat16").
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

from jaxserve.config import load_config
from jaxserve.models.loader import load_model
from jaxserve.pull import resolve_model
from jaxserve.runner.attention import make_attention_backend
from jaxserve.scoring import prompt_logits

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ("README.md", "docs/architecture.md", "docs/api.md", "docs/structured_outputs.md")


def log_softmax(x: np.ndarray) -> np.ndarray:  # f32[T, V] -> f64[T, V]
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/smollm2.yaml")
    p.add_argument("--dtype", default="bfloat16", help="activations and K/V")
    p.add_argument("--weight-dtype", default=None, help="stored weights (default: --dtype)")
    p.add_argument("--kv-dtype", default=None, help="K/V cache of the variant (default: --dtype)")
    p.add_argument("--walk-all", action="store_true",
                   help="attend through the page walk (the decode path), in both runs")
    p.add_argument("--tokens", type=int, default=256, help="tokens per text window")
    p.add_argument("--result-json", type=Path)
    args = p.parse_args()
    config = load_config(args.config)
    model_dir = resolve_model(config.model.path)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    windows = [tokenizer((ROOT / name).read_text(), add_special_tokens=False).input_ids[:args.tokens]
               for name in TEXTS]
    backend = make_attention_backend("reference")
    if args.walk_all:  # no dense in-step product: every key through _walk_rows
        backend = dataclasses.replace(backend, attention=functools.partial(
            backend.attention, max_dense_tokens=0, block_q=1))
    label = args.dtype if args.weight_dtype in (None, args.dtype) else \
        f"{args.dtype}+{args.weight_dtype}-weights"
    if args.kv_dtype not in (None, args.dtype):
        label += f"+{args.kv_dtype}-kv"
    runs = []  # [float32, variant]: each its own load and forward, even when both are float32
    for dtype, weight_dtype, kv_dtype in (("float32", None, None),
                                          (args.dtype, args.weight_dtype, args.kv_dtype)):
        model = load_model(model_dir, backend, dtype, weight_dtype)
        runs.append([log_softmax(prompt_logits(model, ids, kv_dtype=kv_dtype)) for ids in windows])
        del model
    nll, agree, kl, max_diff = ([], []), [], [], 0.0
    for i, ids in enumerate(windows):
        ref, other = runs[0][i][:-1], runs[1][i][:-1]  # f64[T - 1, V]: position t predicts t + 1
        targets = np.asarray(ids[1:])
        for j, lp in enumerate((ref, other)):
            nll[j].extend(-lp[np.arange(len(targets)), targets])
        agree.extend(ref.argmax(-1) == other.argmax(-1))
        kl.extend((np.exp(ref) * (ref - other)).sum(-1))
        max_diff = max(max_diff, float(np.abs(ref - other).max()))
    result = {
        "positions": len(agree),
        "perplexity": {"float32": float(np.exp(np.mean(nll[0]))),
                       label: float(np.exp(np.mean(nll[1])))},
        "top1_agreement": float(np.mean(agree)),
        "kl_mean": float(np.mean(kl)), "kl_p99": float(np.percentile(kl, 99)),
        "max_logprob_diff": max_diff,
    }
    print(f"{config.model.path}, {len(windows)} windows of {args.tokens} tokens, "
          f"{result['positions']} positions")
    for d, ppl in result["perplexity"].items():
        print(f"  perplexity {d:9} {ppl:.3f}")
    print(f"  top-1 agreement {100 * result['top1_agreement']:.2f}%, KL(float32 || {label}) "
          f"mean {result['kl_mean']:.2e} p99 {result['kl_p99']:.2e}, "
          f"max |log-prob difference| {max_diff:.3f}")
    if args.result_json:
        args.result_json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
