"""Ragged paged attention as a Pallas kernel for NVIDIA GPUs (the Pallas Triton backend).

Same signature, cache layout and semantics as ``cpu_ragged_paged_attention`` in
``cpu_attention.py`` (read its docstring first) and ``oracle.ragged_paged_attention``. Design,
in the order a program runs (see ``docs/kernels.md``):

1. Outside the kernel, plain jnp cuts every sequence's queries into *work items* of ``block_q``
   tokens (a sequence with 9 queries and block_q 8 gives two items; a q_len == 0 sequence gives
   none) and appends padding items that cover the tokens past ``cu_q_lens[num_seqs]``. The number
   of items is bounded statically by ``cdiv(T, block_q) + S``, so the grid has a fixed size.
2. The grid is ``(work items, KV heads)``. A program loads its item's queries for *all* the query
   heads that share its KV head (GQA): ``block_q * G_pad`` rows, with the group ``G = Hq / Hkv``
   padded to a power of two by masked loads (Triton needs power-of-two shapes).
3. It walks its sequence's pages ``pages_per_block`` at a time with a dynamic loop bound, loading
   K and V tiles through the page table, and keeps an online softmax (running max ``m``, running
   sum ``l``, accumulator ``acc``) in float32. Causality trims the loop: an item never reads pages
   past its last query's position, nor (with a sliding window) before its first query's window.
4. It stores only its real rows; padding items have no keys, so they store zeros.

Every load is a masked gather with index arrays (no ``pl.ds`` slices): on GPU that is plain
pointer arithmetic, and in interpret mode it becomes a gather instead of a padded copy of the
whole cache per load.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jaxserve.kernels.ragged_paged_attention.ragged import sanitize_cu_q_lens

_MASK_VALUE = -1e30  # same finite mask as the CPU backend, so fully masked rows give 0 not NaN

DEFAULT_BLOCK_ROWS = 64  # query rows (tokens x padded group) per program when block_q is None
DEFAULT_BLOCK_KEYS = 64  # keys per loop step when pages_per_block is None
DEFAULT_NUM_WARPS = 4
DEFAULT_NUM_STAGES = 2


class WorkItems(NamedTuple):
    """One entry per work item: a block of <= block_q query tokens of one sequence."""

    q_start: jax.Array  # i32[W] first token of the item in the flattened token axis
    q_end: jax.Array  # i32[W] one past its last token (<= q_start for an empty padding item)
    seq: jax.Array  # i32[W] row of page_table the item reads (0 for padding items)
    kv_len: jax.Array  # i32[W] keys of that sequence, 0 for padding items (no loop, output 0)
    pos0: jax.Array  # i32[W] position of the item's first query in its sequence


def _is_power_of_2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def make_work_items(
    cu_q_lens: jax.Array,  # i32[S + 1]
    kv_lens: jax.Array,  # i32[S]
    num_seqs: jax.Array,  # i32[1]
    num_tokens: int,
    block_q: int,
) -> WorkItems:  # each field i32[cdiv(num_tokens, block_q) + S]
    """Cuts each sequence's queries into blocks of block_q, then covers the padding tokens."""
    num_rows = kv_lens.shape[0]
    # sum_s cdiv(q_len_s, block_q) <= cdiv(T, block_q) + S - 1, and the leftover items are at
    # least as many as the padding tokens need, so this static count always suffices
    num_items = pl.cdiv(num_tokens, block_q) + num_rows
    cu = sanitize_cu_q_lens(cu_q_lens, num_seqs)  # i32[S + 1]
    q_lens = cu[1:] - cu[:-1]  # i32[S], 0 for padding rows
    blocks = (q_lens + block_q - 1) // block_q  # i32[S]
    cu_blocks = jnp.cumsum(blocks)  # i32[S], items of sequences 0 to s
    num_real_items = cu_blocks[-1]
    w = jnp.arange(num_items, dtype=jnp.int32)  # i32[W]
    # side="right" skips sequences with no items (q_len == 0)
    seq = jnp.clip(jnp.searchsorted(cu_blocks, w, side="right"), 0, num_rows - 1).astype(jnp.int32)
    blk = w - (cu_blocks[seq] - blocks[seq])  # i32[W], block index within its sequence
    real = w < num_real_items  # bool[W]
    num_real_tokens = cu[num_seqs.reshape(())]
    pad_start = num_real_tokens + (w - num_real_items) * block_q  # i32[W]
    q_start = jnp.where(real, cu[seq] + blk * block_q, pad_start)
    q_end = jnp.minimum(q_start + block_q, jnp.where(real, cu[seq + 1], num_tokens))
    kv_len = jnp.where(real, kv_lens[seq], 0)
    pos0 = kv_lens[seq] - q_lens[seq] + blk * block_q
    return WorkItems(q_start, q_end, jnp.where(real, seq, 0), kv_len, jnp.where(real, pos0, 0))


def _attention_kernel(
    # inputs: the work items, then the attention operands (all whole arrays in GPU memory)
    q_start_ref,  # i32[W]
    q_end_ref,  # i32[W]
    seq_ref,  # i32[W]
    kv_len_ref,  # i32[W]
    pos0_ref,  # i32[W]
    page_table_ref,  # i32[S, P]
    q_ref,  # [T, Hq, D]
    kv_ref,  # [num_pages, 2, Hkv, page_size, D]
    # output
    o_ref,  # [T, Hq, D]
    *,
    block_q: int,
    group: int,
    group_pad: int,
    pages_per_block: int,
    sm_scale: float,
    sliding_window: int | None,
    logits_soft_cap: float | None,
):
    w, kv_head = pl.program_id(0), pl.program_id(1)
    q_start, q_end, seq = q_start_ref[w], q_end_ref[w], seq_ref[w]
    kv_len, pos0 = kv_len_ref[w], pos0_ref[w]
    page_size, head_dim = kv_ref.shape[3], kv_ref.shape[4]
    max_pages = page_table_ref.shape[1]
    rows = block_q * group_pad
    block_k = pages_per_block * page_size
    # the products run in the cache's dtype (bf16 K/V under f32 queries: bf16 tensor-core dots
    # accumulating in f32); f32 tiles would otherwise be multiplied in TF32 on GPU, far from the
    # 1e-5 the tests ask
    dot_dtype = kv_ref.dtype
    precision = lax.Precision.HIGHEST if dot_dtype == jnp.float32 else None

    # row r holds token r // group_pad of the item and query head r % group_pad of the group
    r = lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
    token = q_start + r // group_pad  # i32[rows, 1]
    g = r % group_pad  # i32[rows, 1]
    head = kv_head * group + g  # i32[rows, 1]
    row_ok = (token < q_end) & (g < group)  # bool[rows, 1]; padded group heads are never real
    d = lax.broadcasted_iota(jnp.int32, (1, head_dim), 1)  # i32[1, D]
    q = pltriton.load(q_ref.at[token, head, d], mask=row_ok, other=0).astype(dot_dtype)  # [rows, D]
    q_pos = pos0 + r // group_pad  # i32[rows, 1]

    # causality: no query of this item sees past its last position; the window hides the front
    kv_stop = jnp.minimum(kv_len, pos0 + (q_end - q_start))
    first_page = 0
    if sliding_window is not None:
        first_page = jnp.maximum(pos0 - sliding_window + 1, 0) // page_size
    num_blocks = jnp.maximum(pl.cdiv(kv_stop - first_page * page_size, block_k), 0)

    kk = lax.broadcasted_iota(jnp.int32, (block_k, 1), 0)  # i32[block_k, 1], key within a block

    def body(j, carry):
        acc, m, l = carry  # f32[rows, D], f32[rows], f32[rows]
        page_idx = first_page + j * pages_per_block + kk // page_size  # i32[block_k, 1]
        key_pos = page_idx * page_size + kk % page_size  # i32[block_k, 1]
        # slots past kv_len were never written for this sequence: load them as 0 (a reused page
        # may hold a dead request's NaN, and 0 * NaN would still be NaN)
        key_ok = (key_pos < kv_stop) & (page_idx < max_pages)  # bool[block_k, 1]
        page = pltriton.load(page_table_ref.at[seq, page_idx], mask=key_ok, other=0)
        slot = kk % page_size
        k = pltriton.load(kv_ref.at[page, 0, kv_head, slot, d], mask=key_ok, other=0)
        v = pltriton.load(kv_ref.at[page, 1, kv_head, slot, d], mask=key_ok, other=0)

        s = lax.dot_general(  # f32[rows, block_k] = q @ k.T
            q, k, (((1,), (1,)), ((), ())), precision=precision,
            preferred_element_type=jnp.float32,
        ) * sm_scale
        if logits_soft_cap is not None:
            s = logits_soft_cap * jnp.tanh(s / logits_soft_cap)
        key_row = key_pos.reshape(1, block_k)  # i32[1, block_k]
        mask = (key_row <= q_pos) & (key_row < kv_stop)  # bool[rows, block_k]
        if sliding_window is not None:
            mask &= key_row > q_pos - sliding_window
        s = jnp.where(mask, s, _MASK_VALUE)

        m_new = jnp.maximum(m, s.max(axis=1))  # f32[rows]
        p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)  # masked keys weigh exactly 0
        alpha = jnp.exp(m - m_new)  # f32[rows], rescales what was summed under the old max
        l_new = alpha * l + p.sum(axis=1)
        pv = lax.dot_general(  # f32[rows, D] = p @ v
            p.astype(v.dtype), v, (((1,), (0,)), ((), ())), precision=precision,
            preferred_element_type=jnp.float32,
        )
        return alpha[:, None] * acc + pv, m_new, l_new

    init = (
        jnp.zeros((rows, head_dim), jnp.float32),
        jnp.full((rows,), _MASK_VALUE, jnp.float32),
        jnp.zeros((rows,), jnp.float32),
    )
    acc, _, l = lax.fori_loop(0, num_blocks, body, init)
    out = acc / jnp.where(l == 0.0, 1.0, l)[:, None]  # rows with no keys (padding) stay 0
    pltriton.store(o_ref.at[token, head, d], out.astype(o_ref.dtype), mask=row_ok)


@functools.partial(
    jax.jit,
    static_argnames=(
        "sm_scale", "sliding_window", "logits_soft_cap", "block_q", "pages_per_block",
        "num_warps", "num_stages", "interpret",
    ),
)
def ragged_paged_attention(
    q: jax.Array,  # [T, Hq, D]
    kv_pages: jax.Array,  # [num_pages, 2, Hkv, page_size, D]
    kv_lens: jax.Array,  # i32[S]
    page_table: jax.Array,  # i32[S, P]
    cu_q_lens: jax.Array,  # i32[S + 1]
    num_seqs: jax.Array,  # i32[1]
    *,
    sm_scale: float,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    block_q: int | None = None,
    pages_per_block: int | None = None,
    num_warps: int = DEFAULT_NUM_WARPS,
    num_stages: int = DEFAULT_NUM_STAGES,
    interpret: bool | None = None,
) -> jax.Array:  # [T, Hq, D]
    """Pallas (Triton) ragged paged attention; see the module docstring.

    block_q: query tokens per program, a power of two with block_q * G_pad >= 16 (Triton's
      smallest dot), where G_pad is Hq / Hkv rounded up to a power of two. Default:
      ``DEFAULT_BLOCK_ROWS // G_pad`` (at least 16 // G_pad), i.e. 64 score rows per program.
    pages_per_block: pages per loop step, a power of two with pages_per_block * page_size >= 16.
      Default: ``DEFAULT_BLOCK_KEYS // page_size`` (at least 1), i.e. 64 keys per step.
    num_warps, num_stages: Triton launch parameters (ignored in interpret mode).
    interpret: None means interpret mode exactly when the default backend is the CPU.
    """
    num_tokens, num_q_heads, head_dim = q.shape
    _, _, num_kv_heads, page_size, _ = kv_pages.shape
    if num_q_heads % num_kv_heads:
        raise ValueError(f"Hq={num_q_heads} must be a multiple of Hkv={num_kv_heads}")
    if not _is_power_of_2(head_dim) or head_dim < 16:
        raise ValueError(f"head_dim={head_dim} must be a power of two >= 16 (Triton tiles)")
    if not _is_power_of_2(page_size):
        raise ValueError(f"page_size={page_size} must be a power of two (Triton tiles)")
    group = num_q_heads // num_kv_heads
    group_pad = pl.next_power_of_2(group)
    if block_q is None:
        block_q = max(DEFAULT_BLOCK_ROWS // group_pad, 1)
    if pages_per_block is None:
        pages_per_block = max(DEFAULT_BLOCK_KEYS // page_size, 1)
    if not _is_power_of_2(block_q) or block_q * group_pad < 16:
        raise ValueError(
            f"block_q={block_q} must be a power of two with block_q * {group_pad} >= 16"
        )
    if not _is_power_of_2(pages_per_block) or pages_per_block * page_size < 16:
        raise ValueError(
            f"pages_per_block={pages_per_block} must be a power of two with "
            f"pages_per_block * page_size({page_size}) >= 16"
        )
    if interpret is None:
        interpret = jax.default_backend() == "cpu"

    items = make_work_items(cu_q_lens, kv_lens, num_seqs, num_tokens, block_q)
    kernel = functools.partial(
        _attention_kernel,
        block_q=block_q,
        group=group,
        group_pad=group_pad,
        pages_per_block=pages_per_block,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        logits_soft_cap=logits_soft_cap,
    )
    return pl.pallas_call(
        kernel,
        grid=(items.q_start.shape[0], num_kv_heads),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        # Triton compiler params also pick the Triton backend: without them, this JAX lowers
        # pallas_call on GPU with Mosaic GPU, which supports none of the gathers above
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="ragged_paged_attention",
    )(*items, page_table, q, kv_pages)
