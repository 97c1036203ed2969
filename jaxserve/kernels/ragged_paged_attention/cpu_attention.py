"""The CPU attention backend: ragged paged attention and the K/V page write in jnp, for XLA:CPU.

Layout shared with the Pallas kernel (``kernel.py``), the oracle (``oracle.py``) and the model:

    q            f32|bf16[T, Hq, D]                       tokens of all sequences, concatenated
    kv_pages     f32|bf16|u16[num_pages, 2, Hkv, page_size, D] one layer's cache; [:, 0] is K, [:, 1]
                                                           is V; u16 holds bfloat16 K/V as their bit
                                                           patterns (``kv_storage.py``)
    kv_lens      i32[S]                                    tokens in the cache for each sequence,
                                                           counting this step's new ones
    page_table   i32[S, P]                                 page ids of each sequence, in order
    cu_q_lens    i32[S + 1]                                query offsets: sequence s owns
                                                           q[cu_q_lens[s]:cu_q_lens[s + 1]]
    num_seqs     i32[1]                                    sequences in use; rows >= num_seqs are padding

Query i of a sequence with q_len queries and kv_len keys sits at position kv_len - q_len + i and
attends causally to keys 0..kv_len - q_len + i. Tokens past cu_q_lens[num_seqs] are padding: their
output is zero. A sequence with q_len == 0 contributes nothing.

Every sequence with exactly one query (a decode) walks its pages with an online softmax (a
``fori_loop`` up to the furthest query's page, ``pages_per_iter`` pages at a time), so memory
stays O(T * pages_per_iter * page_size) per iteration whatever the context length. Each iteration
scores all of its keys with one [B * G, D] x [D, pages * page_size] product per (row, KV head) and
weighs V with one [B * G, pages * page_size] x [.., D] product, K and V gathered head-major
(``_gather_head_major``). Rows walk the pages ``tuned.ROWS_PER_WALK`` at a time up to the last row
with a query, each walk to its own furthest key, so a bucket's padding rows cost little. When a
step of up to ``max_dense_tokens`` tokens holds a prefill chunk (``_mixed``, a ``lax.cond``), the
chunks' tokens attend to the step's own keys and to their earlier keys through dense products
(``cpu_prefill.py``; a decode's own key stays in its walk), and the online-softmax states merge.
Longer steps that hold a chunk send every key through a walk in blocks of ``block_q`` queries
(``_blocked``).

bfloat16 K/V come as uint16 bit patterns (``kv_storage.py``): every product then takes the
gathered keys and values as bfloat16, and the queries and softmax weights cast to bfloat16, with
float32 accumulation (the dense prefill products too). The tuned constants are data in
``tuned.py``; ``oracle.py`` is the plain loop the tests hold this to.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxserve.kernels.ragged_paged_attention import tuned
from jaxserve.kernels.ragged_paged_attention.cpu_prefill import in_step, prior_of_chunks
from jaxserve.kernels.ragged_paged_attention.kv_storage import (
    for_products,
    product_dtype,
    to_storage,
)
from jaxserve.kernels.ragged_paged_attention.ragged import (
    MASK_VALUE,
    empty_state,
    merge,
    normalize,
    q_lens,
    sanitize_cu_q_lens,
    scatter_state,
)


def _reach(pos, kv_len):  # i32[N, B], i32[N] -> i32[N]: keys the furthest query of a row sees
    return jnp.max(jnp.minimum(pos + 1, kv_len[:, None]), axis=1)


def _gather_head_major(kv_pages, ids, which):
    """K (which=0) or V (1) of pages ``ids`` i32[N, p], gathered straight into [N, Hkv, p * K, D]
    (float32, or bfloat16 from a uint16 cache).

    One gather per half, with the head axis placed before the page axis in its output, so each
    (row, head)'s keys come out contiguous for a plain batched dot: no transpose or slice copy
    after the gather.
    """
    n, p = ids.shape
    _, _, hkv, page_size, d = kv_pages.shape
    idx = jnp.stack([ids, jnp.full_like(ids, which)], axis=-1)  # i32[N, p, 2]: (page, K or V)
    dims = jax.lax.GatherDimensionNumbers(
        offset_dims=(1, 3, 4),  # output [N, Hkv, p, K, D]: the slice's (Hkv, K, D) around p
        collapsed_slice_dims=(0, 1), start_index_map=(0, 1))
    x = jax.lax.gather(kv_pages, idx, dims, slice_sizes=(1, 1, hkv, page_size, d), mode="clip")
    return for_products(x.reshape(n, hkv, p * page_size, d))


def _walk_rows(qg, pos, pages, kv_len, kv_pages, sliding_window, logits_soft_cap, pages_per_iter):
    """One walk: rows ``qg`` [N, B, Hkv, G, D], ``pos`` [N, B], ``pages`` [N, P] and ``kv_len``
    [N] (as in ``_online_softmax_over_pages``) go through their pages together, up to the
    furthest key any of them sees; returns their online-softmax state, [N, B, Hkv, G(, D)]."""
    n, b, hkv, g, d = qg.shape
    page_size = kv_pages.shape[3]
    keys_per_iter = page_size * pages_per_iter
    pad = -pages.shape[1] % pages_per_iter
    pages = jnp.pad(pages, ((0, 0), (0, pad)))  # [N, P'] with P' a multiple of pages_per_iter
    # causal: no query looks past its own position, so the loop stops at the furthest one's page
    furthest = jnp.max(_reach(pos, kv_len))
    num_iters = (furthest + keys_per_iter - 1) // keys_per_iter
    # key k of page slot p in an iteration sits at j * keys_per_iter + p * page_size + k
    in_iter = (jnp.arange(pages_per_iter, dtype=jnp.int32)[:, None] * page_size
               + jnp.arange(page_size, dtype=jnp.int32)[None, :])  # i32[p, K]

    # queries of a group side by side under their KV head, in the products' dtype: [N, Hkv, B * G, D]
    qh = qg.transpose(0, 2, 1, 3, 4).reshape(n, hkv, b * g, d).astype(product_dtype(kv_pages.dtype))
    key_in_iter = in_iter.reshape(-1)  # i32[p * K]

    def body(j, carry):
        m, l, acc = carry  # f32[N, Hkv, B, G], f32[N, Hkv, B, G], f32[N, Hkv, B, G, D]
        ids = jax.lax.dynamic_slice_in_dim(pages, j * pages_per_iter, pages_per_iter, axis=1)
        k = _gather_head_major(kv_pages, ids, 0)  # f32|bf16[N, Hkv, pK, D]
        v = _gather_head_major(kv_pages, ids, 1)  # f32|bf16[N, Hkv, pK, D]
        key_pos = j * keys_per_iter + key_in_iter  # i32[pK]
        # slots past kv_len were never written for this sequence (a reused page may hold a dead
        # request's inf/NaN); 0 * NaN is NaN, so a zero weight alone would not hide them
        in_cache = key_pos[None] < kv_len[:, None]  # bool[N, pK]
        # scores per (sequence, head) over all keys of the iteration: one [B*G, D] x [D, p*K]
        # product each, and one plain [B*G, pK] x [pK, D] product for the output; with bf16 K/V
        # the queries and weights go in as bf16 too, accumulating in f32
        s = jnp.einsum("nhqd,nhkd->nhqk", qh, k, preferred_element_type=jnp.float32
                       ).reshape(n, hkv, b, g, keys_per_iter)
        v = jnp.where(in_cache[:, None, :, None], v, jnp.zeros((), v.dtype))
        if logits_soft_cap is not None:
            s = logits_soft_cap * jnp.tanh(s / logits_soft_cap)
        qpos = pos[:, :, None]  # i32[N, B, 1]
        mask = (key_pos[None, None, :] <= qpos) & in_cache[:, None, :]  # bool[N, B, pK]
        if sliding_window is not None:
            mask &= key_pos[None, None, :] > qpos - sliding_window
        mask = mask[:, None, :, None, :]  # bool[N, 1, B, 1, pK]
        s = jnp.where(mask, s, MASK_VALUE)  # f32[N, Hkv, B, G, pK]
        m_new = jnp.maximum(m, s.max(axis=-1))
        p = jnp.exp(s - m_new[..., None]) * mask  # masked keys weigh exactly 0
        alpha = jnp.exp(m - m_new)
        l_new = alpha * l + p.sum(axis=-1)
        pv = jnp.einsum("nhqk,nhkd->nhqd", p.reshape(n, hkv, b * g, keys_per_iter).astype(v.dtype),
                        v, preferred_element_type=jnp.float32)
        acc_new = alpha[..., None] * acc + pv.reshape(n, hkv, b, g, d)
        return m_new, l_new, acc_new

    m, l, acc = jax.lax.fori_loop(0, num_iters, body, empty_state((n, hkv, b, g, d)))
    return m.transpose(0, 2, 1, 3), l.transpose(0, 2, 1, 3), acc.transpose(0, 2, 1, 3, 4)


def _online_softmax_over_pages(
    qg: jax.Array,  # f32[N, B, Hkv, G, D]: N groups of B queries, pre-scaled
    pos: jax.Array,  # i32[N, B]: each query's position; -1 for no query
    pages: jax.Array,  # i32[N, P]: the page table row of each group's sequence
    kv_len: jax.Array,  # i32[N]: keys in each group's sequence (0 for no sequence)
    kv_pages: jax.Array,  # [num_pages, 2, Hkv, page_size, D]
    sliding_window: int | None,
    logits_soft_cap: float | None,
    pages_per_iter: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:  # running max, sum, output: [N, B, Hkv, G(, D)]
    """The online-softmax state over the keys the page walk reaches, not yet normalized.

    Rows go through the pages ``tuned.ROWS_PER_WALK`` at a time, up to the last row with a
    query: a bucket's padding rows (a 16-row decode bucket holding 5 sequences) cost nothing
    past their walk, and each walk stops at its own furthest key rather than the batch's.
    """
    n = qg.shape[0]
    r = min(tuned.ROWS_PER_WALK, n)
    walk = lambda *rows: _walk_rows(*rows, kv_pages, sliding_window, logits_soft_cap,
                                    pages_per_iter)
    if r == n:
        return walk(qg, pos, pages, kv_len)
    pad = -n % r
    qg = jnp.pad(qg, ((0, pad),) + ((0, 0),) * 4)  # [N', B, Hkv, G, D]
    pos = jnp.pad(pos, ((0, pad), (0, 0)), constant_values=-1)  # i32[N', B]
    pages = jnp.pad(pages, ((0, pad), (0, 0)))  # i32[N', P]
    kv_len = jnp.pad(kv_len, (0, pad))  # i32[N']
    has_keys = _reach(pos, kv_len) > 0  # bool[N']
    last = jnp.max(jnp.where(has_keys, jnp.arange(n + pad, dtype=jnp.int32), -1))

    def one_walk(i, state):
        rows = (jax.lax.dynamic_slice_in_dim(x, i * r, r, axis=0) for x in (qg, pos, pages, kv_len))
        return tuple(jax.lax.dynamic_update_slice_in_dim(whole, part, i * r, axis=0)
                     for whole, part in zip(state, walk(*rows)))

    state = jax.lax.fori_loop(0, (last + r) // r, one_walk, empty_state(qg.shape))
    return tuple(x[:n] for x in state)


def _blocked(qg, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, window, cap, block_q,
             pages_per_iter):
    """Blocks of block_q queries walk their sequence's pages; the state comes back in token order,
    [T, Hkv, G(, D)]. The first eight arguments are ``_mixed``'s."""
    num_tokens, num_seqs_pad = qg.shape[0], kv_lens.shape[0]
    cu = sanitize_cu_q_lens(cu_q_lens, num_seqs)  # i32[S + 1]
    lens = cu[1:] - cu[:-1]  # i32[S]
    # work items: block i of sequence s holds its queries i * block_q ... (i + 1) * block_q - 1;
    # sum over s of cdiv(q_len, block_q) <= cdiv(T, block_q) + S, a static bound
    cu_blocks = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum((lens + block_q - 1) // block_q)])
    num_items = -(-num_tokens // block_q) + num_seqs_pad
    w = jnp.arange(num_items, dtype=jnp.int32)
    item_seq = jnp.clip(jnp.searchsorted(cu_blocks, w, side="right") - 1, 0, num_seqs_pad - 1)
    item_valid = w < cu_blocks[-1]  # bool[N]
    first = cu[item_seq] + (w - cu_blocks[item_seq]) * block_q  # i32[N]: first query's token
    token = first[:, None] + jnp.arange(block_q, dtype=jnp.int32)[None, :]  # i32[N, B]
    is_query = (token < cu[item_seq + 1][:, None]) & item_valid[:, None]  # bool[N, B]
    pos = kv_lens[item_seq][:, None] - lens[item_seq][:, None] + token - cu[item_seq][:, None]
    pos = jnp.where(is_query, pos, -1)  # i32[N, B]
    safe_token = jnp.where(is_query, token, 0)
    state = _online_softmax_over_pages(
        qg[safe_token], pos, page_table[item_seq], jnp.where(item_valid, kv_lens[item_seq], 0),
        kv_pages, window, cap, pages_per_iter,
    )  # [N, B, Hkv, G(, D)] each
    # each real token is in exactly one block: scatter the blocks back to token order
    dest = jnp.where(is_query, token, num_tokens)
    return scatter_state(state, dest, qg.shape)


def _single_queries(qg, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, window, cap,
                    pages_per_iter):
    """Sequences with exactly one query (decodes) walk all their keys, their own included, one
    row per sequence. Returns the rows' online-softmax states, [S, Hkv, G(, D)], and each row's
    token (T for a row without a single query). The first eight arguments are ``_mixed``'s."""
    num_tokens = qg.shape[0]
    cu = sanitize_cu_q_lens(cu_q_lens, num_seqs)  # i32[S + 1]
    one_query = (cu[1:] - cu[:-1]) == 1  # bool[S]
    token = jnp.where(one_query, cu[:-1], 0)  # i32[S]
    walk_len = jnp.where(one_query, kv_lens, 0)  # i32[S]
    state = _online_softmax_over_pages(
        qg[token][:, None], (kv_lens - 1)[:, None], page_table, walk_len, kv_pages, window, cap,
        pages_per_iter,
    )  # [S, 1, Hkv, G(, D)] each
    return tuple(x[:, 0] for x in state), jnp.where(one_query, token, num_tokens)


def _mixed(
    qg: jax.Array,  # f32[T, Hkv, G, D]: queries grouped under their KV head, pre-scaled
    kv_pages: jax.Array,  # f32|bf16|u16[num_pages, 2, Hkv, page_size, D]
    kv_lens: jax.Array,  # i32[S]
    page_table: jax.Array,  # i32[S, P]
    cu_q_lens: jax.Array,  # i32[S + 1]
    num_seqs: jax.Array,  # i32[1]
    window: int | None,
    cap: float | None,
    pages_per_iter: int,
    key_block: int,
    chunks: bool = True,  # False: the caller knows no sequence has more than one query
) -> jax.Array:  # f32[T, Hkv, G, D]
    """Any mix of decodes and prefill chunks: single queries walk their pages; when the step
    has a chunk, the step's own keys go through the dense product and each chunk's earlier keys
    through its gathers, and the states merge.

    Past ``tuned.WALK_IN_BRANCHES_UP_TO`` tokens the walk sits outside the ``lax.cond``, so the
    program holds it once per layer rather than once per branch: the attention is most of a
    step program, and its size is what an executable costs in memory and in load time.
    Smaller programs keep a walk in each branch, which XLA:CPU runs faster, for one more walk
    in the program. A 1-token program has no chunk branch.
    """
    args = (qg, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, window, cap)
    has_chunk = jnp.max(q_lens(cu_q_lens, num_seqs)) > 1

    def walk():
        return _single_queries(*args, pages_per_iter)

    def decode_only(rows, dest):  # each row's output straight to its token
        return jnp.zeros(qg.shape, jnp.float32).at[dest].set(normalize(*rows), mode="drop")

    def with_chunks(rows, dest):
        walked = scatter_state(rows, dest, qg.shape)
        return normalize(*merge(merge(walked, in_step(*args)),
                                  prior_of_chunks(*args, key_block, tuned.ROW_BLOCK)))

    if qg.shape[0] == 1 or not chunks:  # no chunk possible (one token) or wanted: no chunk code
        return decode_only(*walk())
    if qg.shape[0] <= tuned.WALK_IN_BRANCHES_UP_TO:
        return jax.lax.cond(has_chunk, lambda: with_chunks(*walk()), lambda: decode_only(*walk()))
    rows, dest = walk()
    return jax.lax.cond(has_chunk, lambda: with_chunks(rows, dest),
                        lambda: decode_only(rows, dest))


def _all_through_pages(*args, block_q, pages_per_iter):
    return normalize(*_blocked(*args, block_q=block_q, pages_per_iter=pages_per_iter))


# Jitted like the Pallas kernels: every layer calls these with the same shapes, so a model step
# traces each once instead of once per layer (XLA inlines the call).
@functools.partial(jax.jit, static_argnames=(
    "sm_scale", "sliding_window", "logits_soft_cap", "block_q", "pages_per_iter",
    "max_dense_tokens", "key_block",
))
def cpu_ragged_paged_attention(
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
    block_q: int = tuned.BLOCK_Q,  # queries per page walk in steps longer than max_dense_tokens
    pages_per_iter: int | None = None,  # pages per walk iteration; None: tuned.PAGES_PER_ITER,
                                        # or LONE_DECODE_PAGES_PER_ITER for a one-token step
    max_dense_tokens: int = tuned.MAX_DENSE_TOKENS,  # steps this long attend to own keys densely
    key_block: int = tuned.KEY_BLOCK,  # earlier keys per gather for a prefill chunk
) -> jax.Array:  # [T, Hq, D]
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = kv_pages.shape[2]
    if pages_per_iter is None:
        pages_per_iter = (tuned.LONE_DECODE_PAGES_PER_ITER if num_tokens == 1
                          else tuned.PAGES_PER_ITER)
    group = num_q_heads // num_kv_heads
    # [T, Hkv, G, D]: query heads grouped under the KV head they share (GQA)
    qg = (q.astype(jnp.float32) * sm_scale).reshape(num_tokens, num_kv_heads, group, head_dim)
    args = (qg, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, sliding_window, logits_soft_cap)
    mixed = functools.partial(_mixed, *args, pages_per_iter=pages_per_iter, key_block=key_block)
    if num_tokens <= max_dense_tokens:
        out = mixed()
    else:  # the dense product is O(T^2): past max_dense_tokens, a chunk's keys go through walks
        out = jax.lax.cond(jnp.max(q_lens(cu_q_lens, num_seqs)) <= 1,
                           functools.partial(mixed, chunks=False),
                           functools.partial(_all_through_pages, *args, block_q=block_q,
                                             pages_per_iter=pages_per_iter))
    return out.reshape(num_tokens, num_q_heads, head_dim).astype(q.dtype)


@jax.jit
def cpu_update_kv_pages(
    kv_pages: jax.Array,  # [num_pages, 2, Hkv, page_size, D]
    k: jax.Array,  # [T, Hkv, D]
    v: jax.Array,  # [T, Hkv, D]
    slot_mapping: jax.Array,  # i32[T]: page * page_size + offset; -1 for padding tokens
) -> jax.Array:  # [num_pages, 2, Hkv, page_size, D], updated in place when donated
    num_pages, _, _, page_size, _ = kv_pages.shape
    # padding slots point past the cache and are dropped by the scatter
    slots = jnp.where(slot_mapping < 0, num_pages * page_size, slot_mapping)
    page, offset = slots // page_size, slots % page_size  # i32[T], i32[T]
    kv = to_storage(jnp.stack([k, v], axis=1), kv_pages.dtype)  # [T, 2, Hkv, D]
    return kv_pages.at[page, :, :, offset, :].set(kv, mode="drop")
