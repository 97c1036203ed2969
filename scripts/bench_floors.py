"""The floors a model's steps cannot beat on this machine: measured matmul rate and memory
bandwidth, turned into milliseconds per decode step and per prefill token for a model folder.

    python scripts/bench_floors.py --config configs/smollm2.yaml

- compute floor of a step of T tokens: 2 x parameters x T FLOPs at the best measured matmul rate
  (XLA on the model's own MLP shape, at several row counts);
- memory floor of a decode step: every weight byte (and each sequence's K/V) read once at the
  measured bandwidth (a jitted sum over a 1 GiB array, all cores).

It prints both for 1 and 16 decoding sequences and for a 256-token prefill chunk, to set against
``bench_step.py``'s measured step times.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxserve.config import load_config
from jaxserve.models.llama_config import LlamaConfig
from jaxserve.pull import resolve_model


def best_seconds(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_rate(rows: int, n_in: int, n_out: int, dtype) -> float:
    """FLOP/s of x[rows, n_in] @ w[n_in, n_out] under jit (the best of a few runs)."""
    x = jnp.ones((rows, n_in), dtype)
    w = jnp.ones((n_in, n_out), dtype)
    seconds = best_seconds(jax.jit(lambda a, b: a @ b), x, w, repeats=20 if rows < 64 else 5)
    return 2 * rows * n_in * n_out / seconds


def bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes/s of a jitted full read (sum) of a float32 array of nbytes."""
    a = jnp.ones(nbytes // 4, jnp.float32)
    return nbytes / best_seconds(jax.jit(jnp.sum), a)


def param_count(cfg: LlamaConfig) -> tuple[int, int]:
    """(all parameters, those of the LM head); a tied head counts once, as the embedding."""
    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    attn = h * cfg.num_attention_heads * d * 2 + h * cfg.num_key_value_heads * d * 2
    layer = attn + 3 * h * i + 2 * h
    head = cfg.vocab_size * h
    embed = 0 if cfg.tie_word_embeddings else cfg.vocab_size * h
    return cfg.num_hidden_layers * layer + head + embed + h, head


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/smollm2.yaml")
    p.add_argument("--context", type=int, default=192, help="keys per decoding sequence")
    p.add_argument("--result-json", default=None)
    args = p.parse_args()
    config = load_config(args.config)
    cfg = LlamaConfig.from_hf(resolve_model(config.model.path))
    dtype = jnp.dtype(config.model.dtype)
    params, head = param_count(cfg)
    weight_bytes = params * dtype.itemsize
    kv_bytes_per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * dtype.itemsize

    rates = {rows: matmul_rate(rows, cfg.hidden_size, cfg.intermediate_size, dtype)
             for rows in (1, 16, 256, 512)}
    peak = max(rates.values())
    bw = bandwidth()
    print(f"{config.model.path}: {params / 1e6:.1f}M parameters ({dtype.name}, "
          f"{weight_bytes / 2**20:.0f} MiB), K/V {kv_bytes_per_token / 1024:.1f} KiB per token")
    print(f"matmul rate (x[T, {cfg.hidden_size}] @ w[{cfg.hidden_size}, {cfg.intermediate_size}]): "
          + ", ".join(f"T={r}: {v / 1e9:.1f} GFLOP/s" for r, v in rates.items()))
    print(f"memory bandwidth (jitted sum of 1 GiB): {bw / 1e9:.1f} GB/s")
    rows = []
    print(f"\n{'step':28} {'compute floor ms':>17} {'memory floor ms':>16} {'floor ms':>9}")
    for name, tokens, seqs, context in (("decode, 1 sequence", 1, 1, args.context),
                                        ("decode, 16 sequences", 16, 16, args.context),
                                        ("prefill chunk of 256", 256, 1, 0)):
        # every token goes through every layer; only sampled rows go through the LM head
        flops = 2 * (params - head) * tokens + 2 * head * seqs
        compute_ms = 1e3 * flops / peak
        memory_ms = 1e3 * (weight_bytes + seqs * (context + tokens // seqs) * kv_bytes_per_token) / bw
        rows.append({"step": name, "tokens": tokens, "seqs": seqs, "gflop": flops / 1e9,
                     "compute_floor_ms": compute_ms, "memory_floor_ms": memory_ms,
                     "floor_ms": max(compute_ms, memory_ms)})
        print(f"{name:28} {compute_ms:>17.1f} {memory_ms:>16.1f} {max(compute_ms, memory_ms):>9.1f}")
    if args.result_json:
        Path(args.result_json).write_text(json.dumps(
            {"params": params, "weight_bytes": weight_bytes, "matmul_flops": rates,
             "bandwidth": bw, "steps": rows}, indent=2, default=float))


if __name__ == "__main__":
    main()
