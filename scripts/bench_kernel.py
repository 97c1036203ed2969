"""Time the Pallas kernels (interpret mode on CPU) against the pure-jnp reference.

    PYTHONPATH=. python scripts/bench_kernel.py [--repeats 3] [--dtype bfloat16]

For each batch shape it prints ms per call of both attention implementations and both KV
writes, the attention FLOPs, the minimum bytes any implementation must move (read Q, each
sequence's K/V once, write O) and the H100 floor max(bytes / 3 TB/s, FLOPs / 800 TFLOP/s) in us.
The heads are SmolLM2-135M's (9 query heads, 3 KV heads, head_dim 64), the model jaxserve runs.
On CPU the kernel runs in interpret mode: a sequential loop over its grid, so this measures
which implementation to use on CPU, not how fast the kernel will be on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.kernels.ragged_paged_attention import (
    cpu_ragged_paged_attention,
    cpu_update_kv_pages,
    ragged_paged_attention,
    update_kv_pages,
)

NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE = 9, 3, 64, 16
H100_BYTES_PER_S, H100_FLOPS = 3e12, 8e14

# name -> [(q_len, kv_len)] per sequence
CASES = {
    "decode 8x512": [(1, 512)] * 8,
    "decode 32x1024": [(1, 1024)] * 32,
    "prefill 1x512": [(512, 512)],
    "prefill 2x1024": [(1024, 1024)] * 2,
    "mixed 8x512 + 256/768": [(1, 512)] * 8 + [(256, 768)],
    "mixed 32x1024 + 512/1024": [(1, 1024)] * 32 + [(512, 1024)],
}


def make_batch(seqs, dtype, rng):
    q_lens, kv_lens = np.array(seqs, np.int32).T
    max_pages = int(-(-kv_lens.max() // PAGE_SIZE))
    num_pages = len(seqs) * max_pages
    page_table = rng.permutation(num_pages).astype(np.int32).reshape(len(seqs), max_pages)
    num_tokens = int(q_lens.sum())
    q = rng.standard_normal((num_tokens, NUM_Q_HEADS, HEAD_DIM))
    kv_pages = rng.standard_normal((num_pages, 2, NUM_KV_HEADS, PAGE_SIZE, HEAD_DIM))
    k_new = rng.standard_normal((num_tokens, NUM_KV_HEADS, HEAD_DIM))
    # the new tokens' slots: the last q_len positions of each sequence
    slots = np.concatenate([
        page_table[s, pos // PAGE_SIZE] * PAGE_SIZE + pos % PAGE_SIZE
        for s, (ql, kl) in enumerate(seqs)
        for pos in [np.arange(kl - ql, kl)]
    ]).astype(np.int32)
    attention_args = (
        jnp.asarray(q, dtype),
        jnp.asarray(kv_pages, dtype),
        jnp.asarray(kv_lens),
        jnp.asarray(page_table),
        jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)),
        jnp.asarray([len(seqs)], jnp.int32),
    )
    write_args = (attention_args[1], jnp.asarray(k_new, dtype), jnp.asarray(k_new, dtype),
                  jnp.asarray(slots))
    return attention_args, write_args


def flops_and_bytes(seqs, itemsize: int) -> tuple[int, int]:
    """Causal attention FLOPs (QK^T and PV, 2 * D each per query-key pair) and minimum bytes."""
    pairs = sum(sum(kl - ql + i + 1 for i in range(ql)) for ql, kl in seqs)
    flops = 4 * HEAD_DIM * NUM_Q_HEADS * pairs
    tokens = sum(ql for ql, _ in seqs)
    q_and_out = 2 * tokens * NUM_Q_HEADS * HEAD_DIM * itemsize
    kv = sum(kl for _, kl in seqs) * 2 * NUM_KV_HEADS * HEAD_DIM * itemsize
    metadata = 4 * (len(seqs) * (3 + -(-max(kl for _, kl in seqs) // PAGE_SIZE)))
    return flops, q_and_out + kv + metadata


def time_ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="subset of case names")
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    sm_scale = HEAD_DIM**-0.5
    kernel = jax.jit(lambda *a: ragged_paged_attention(*a, sm_scale=sm_scale))
    reference = jax.jit(lambda *a: cpu_ragged_paged_attention(*a, sm_scale=sm_scale))
    kernel_write, reference_write = jax.jit(update_kv_pages), jax.jit(cpu_update_kv_pages)

    print(f"backend={jax.default_backend()} devices={jax.devices()} dtype={dtype.name} "
          f"heads={NUM_Q_HEADS}/{NUM_KV_HEADS} head_dim={HEAD_DIM} page_size={PAGE_SIZE} "
          f"median of {args.repeats}")
    print("| case | tokens | attn pallas ms | attn ref ms | pallas / ref | write pallas ms "
          "| write ref ms | GFLOP | min MB | H100 floor us |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name in args.cases:
        seqs = CASES[name]
        attention_args, write_args = make_batch(seqs, dtype, rng)
        t_kernel = time_ms(kernel, attention_args, args.repeats)
        t_ref = time_ms(reference, attention_args, args.repeats)
        w_kernel = time_ms(kernel_write, write_args, args.repeats)
        w_ref = time_ms(reference_write, write_args, args.repeats)
        flops, nbytes = flops_and_bytes(seqs, dtype.itemsize)
        floor_us = 1e6 * max(nbytes / H100_BYTES_PER_S, flops / H100_FLOPS)
        print(f"| {name} | {attention_args[0].shape[0]} | {t_kernel:.1f} | {t_ref:.1f} | "
              f"{t_kernel / t_ref:.1f}x | {w_kernel:.2f} | {w_ref:.2f} | {flops / 1e9:.3f} | "
              f"{nbytes / 1e6:.2f} | {floor_us:.2f} |", flush=True)


if __name__ == "__main__":
    main()
