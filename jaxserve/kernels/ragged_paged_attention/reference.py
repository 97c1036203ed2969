"""Pure-jnp ragged paged attention: the test oracle and the CPU fallback.

Layout shared with the Pallas kernel (``kernel.py``) and the model:

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

The reference walks the pages with an online softmax (a ``fori_loop`` up to the furthest query's
page, ``pages_per_iter`` pages at a time), so memory stays O(T * pages_per_iter * page_size) per
iteration whatever the context length and it also serves as the CPU fallback. Each iteration
scores all of its keys with one [B * G, D] x [D, pages * page_size] product per (row, KV head)
and weighs V with one [B * G, pages * page_size] x [.., D] product, K and V gathered head-major
(``_gather_head_major``; measured on SmolLM2's full step: 7-10% faster at 16 sequences than
contracting over the page and key axes of the cache layout, 4% more than moving V head-major
after the gather; 8 pages per iteration another 5-8% over 4). Rows walk the pages
``ROWS_PER_WALK`` at a time up to the last row with a query, each walk to its own furthest key,
so a bucket's padding rows cost little (measured against one walk of all 16 rows of a bucket: 8
decodes 0.82x a step; 8 rows per walk against 4: 16 or 8 decodes 0.965x, 12 decodes 1.06x; both
changes together against neither: 16 decodes 0.90-0.91x, 8 of 16 0.91x, 4 decodes 0.92x, a lone
decode 0.96x). A step of up to ``max_dense_tokens`` tokens (``_mixed``):

- every sequence with exactly one query (a decode) walks its pages, one row per sequence; in a
  decode-only step that is all there is;
- when some sequence has a prefill chunk (``lax.cond``), the chunks' tokens get a dense masked
  product per KV head over the keys the step just wrote, each block of ``ROW_BLOCK`` token rows
  against the keys up to its last row only (``_in_step``; a decode's own key stays in its walk);
  each chunk gathers its earlier keys once, ``key_block`` at a time, and scores them with plain
  [rows * G, key_block] products over windows of up to ``ROW_BLOCK`` of its own rows
  (``_prior_of_chunks``). The online-softmax states merge. Past ``WALK_IN_BRANCHES_UP_TO``
  tokens the walk sits outside the ``cond`` so each layer's program holds it once: the attention
  is ~90% of a SmolLM2 step program's HLO, and its size is what an executable costs in memory
  and in load time.

Longer steps that hold a chunk send every key through a walk in blocks of ``block_q`` queries
(``_blocked``).

bfloat16 K/V come as uint16 bit patterns (``kv_storage.py``): every product then takes the
gathered keys and values as bfloat16, and the queries and softmax weights cast to bfloat16, with
float32 accumulation (the dense prefill products too: 0.93-0.97x a chunk step against widening
the keys to float32, KL against float32 2.30e-4 -> 2.40e-4 with bfloat16 weights).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxserve.kernels.ragged_paged_attention.kv_storage import for_products, product_dtype, to_storage

_MASK_VALUE = -1e30  # finite, so a fully masked row gives exp(...) == 0 rather than NaN
ROWS_PER_WALK = 8  # rows (sequences or query blocks) that walk the pages together
ROW_BLOCK = 128  # token rows per dense product of a prefill chunk (a causal block, a window)
WALK_IN_BRANCHES_UP_TO = 4  # tokens: smaller steps hold the decode walk in each cond branch
# pages per walk iteration: 128 keys with 16-token pages; a lone decode walks 256 keys at a time,
# half the loop iterations (SmolLM2's full step, bench_attention_ab.py, 60 alternating rounds:
# one decode at 400 keys 0.96x against 8 pages, at 192 keys 0.96x and 1.005x in two runs; 32
# pages no better up to 540 keys; wider steps keep 8: the (4, 4) bucket's 4 decodes at 540 /
# 192 keys 1.038x / 0.972x with 16, 16 decodes 1.025x)
PAGES_PER_ITER = 8
LONE_DECODE_PAGES_PER_ITER = 16


def sanitize_cu_q_lens(
    cu_q_lens: jax.Array,  # i32[S + 1]
    num_seqs: jax.Array,  # i32[1]
) -> jax.Array:  # i32[S + 1], entries past num_seqs equal to cu_q_lens[num_seqs]
    """Padding rows own no queries, whatever their cu_q_lens entries say."""
    num_seqs_s = num_seqs.reshape(())
    rows = jnp.arange(cu_q_lens.shape[0], dtype=jnp.int32)  # i32[S + 1]
    return jnp.where(rows <= num_seqs_s, cu_q_lens, cu_q_lens[num_seqs_s])


def _q_lens(cu_q_lens, num_seqs):  # i32[S + 1], i32[1] -> i32[S]: queries per sequence row
    cu = sanitize_cu_q_lens(cu_q_lens, num_seqs)
    return cu[1:] - cu[:-1]


def token_metadata(
    cu_q_lens: jax.Array,  # i32[S + 1]
    kv_lens: jax.Array,  # i32[S]
    num_seqs: jax.Array,  # i32[1]
    num_tokens: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For each query token: its sequence, its position, and whether it is a real token."""
    num_seqs_s = num_seqs.reshape(())
    # entries past cu_q_lens[num_seqs] are padding and may hold garbage; searchsorted needs a
    # sorted array, so repeat the last real offset over them
    cu_q_lens = sanitize_cu_q_lens(cu_q_lens, num_seqs)
    t = jnp.arange(num_tokens, dtype=jnp.int32)  # i32[T]
    # seq_ids[t] = s such that cu_q_lens[s] <= t < cu_q_lens[s + 1]; q_len == 0 rows are skipped
    seq_ids = jnp.searchsorted(cu_q_lens, t, side="right").astype(jnp.int32) - 1  # i32[T]
    valid = t < cu_q_lens[num_seqs_s]  # bool[T]
    seq_ids = jnp.clip(seq_ids, 0, kv_lens.shape[0] - 1)
    q_lens = cu_q_lens[1:] - cu_q_lens[:-1]  # i32[S]
    pos = kv_lens[seq_ids] - q_lens[seq_ids] + (t - cu_q_lens[seq_ids])  # i32[T]
    return seq_ids, jnp.where(valid, pos, -1), valid


def _empty_state(shape):  # [..., D] -> the online-softmax (max, sum, output) over no keys
    return (jnp.full(shape[:-1], _MASK_VALUE, jnp.float32), jnp.zeros(shape[:-1], jnp.float32),
            jnp.zeros(shape, jnp.float32))


def _reach(pos, kv_len):  # i32[N, B], i32[N] -> i32[N]: keys the furthest query of a row sees
    return jnp.max(jnp.minimum(pos + 1, kv_len[:, None]), axis=1)


def _gather_head_major(kv_pages, ids, which):
    """K (which=0) or V (1) of pages ``ids`` i32[N, p], gathered straight into [N, Hkv, p * K, D]
    (float32, or bfloat16 from a uint16 cache).

    One gather per half, with the head axis placed before the page axis in its output, so each
    (row, head)'s keys come out contiguous for a plain batched dot: no transpose or slice copy
    after the gather (measured on SmolLM2's full step against gathering [N, p, 2, Hkv, K, D] and
    moving V head-major: 16 decodes 0.96x a step, a lone decode 0.99x, prefill 0.96-1.01x).
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
        s = jnp.where(mask, s, _MASK_VALUE)  # f32[N, Hkv, B, G, pK]
        m_new = jnp.maximum(m, s.max(axis=-1))
        p = jnp.exp(s - m_new[..., None]) * mask  # masked keys weigh exactly 0
        alpha = jnp.exp(m - m_new)
        l_new = alpha * l + p.sum(axis=-1)
        pv = jnp.einsum("nhqk,nhkd->nhqd", p.reshape(n, hkv, b * g, keys_per_iter).astype(v.dtype),
                        v, preferred_element_type=jnp.float32)
        acc_new = alpha[..., None] * acc + pv.reshape(n, hkv, b, g, d)
        return m_new, l_new, acc_new

    m, l, acc = jax.lax.fori_loop(0, num_iters, body, _empty_state((n, hkv, b, g, d)))
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

    Rows go through the pages ``ROWS_PER_WALK`` at a time, up to the last row with a query: a
    bucket's padding rows (a 16-row decode bucket holding 5 sequences) cost nothing past their
    walk, and each walk stops at its own furthest key rather than the batch's.
    """
    n = qg.shape[0]
    r = min(ROWS_PER_WALK, n)
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

    state = jax.lax.fori_loop(0, (last + r) // r, one_walk, _empty_state(qg.shape))
    return tuple(x[:n] for x in state)


def _normalize(m, l, acc):  # [..., Hkv, G], [..., Hkv, G], [..., Hkv, G, D] -> [..., Hkv, G, D]
    del m
    return acc / jnp.where(l == 0.0, 1.0, l)[..., None]  # queries with no keys stay 0


def _merge(a, b):
    """Two online-softmax states over disjoint key sets -> the state over their union."""
    (m1, l1, acc1), (m2, l2, acc2) = a, b
    m = jnp.maximum(m1, m2)
    w1, w2 = jnp.exp(m1 - m), jnp.exp(m2 - m)
    return m, w1 * l1 + w2 * l2, w1[..., None] * acc1 + w2[..., None] * acc2


def _scatter_state(state, dest, shape):
    """Per-row states (rows named by dest, num_tokens to drop) -> token order, [T, Hkv, G(, D)];
    tokens no row names keep the empty state."""
    return tuple(empty.at[dest].set(x, mode="drop") for empty, x in zip(_empty_state(shape), state))


def _blocked(qg, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, window, cap, block_q,
             pages_per_iter):
    """Blocks of block_q queries walk their sequence's pages; the state comes back in token order."""
    num_tokens, num_seqs_pad = qg.shape[0], kv_lens.shape[0]
    cu = sanitize_cu_q_lens(cu_q_lens, num_seqs)  # i32[S + 1]
    q_lens = cu[1:] - cu[:-1]  # i32[S]
    # work items: block i of sequence s holds its queries i * block_q ... (i + 1) * block_q - 1;
    # sum over s of cdiv(q_len, block_q) <= cdiv(T, block_q) + S, a static bound
    cu_blocks = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum((q_lens + block_q - 1) // block_q)])
    num_items = -(-num_tokens // block_q) + num_seqs_pad
    w = jnp.arange(num_items, dtype=jnp.int32)
    item_seq = jnp.clip(jnp.searchsorted(cu_blocks, w, side="right") - 1, 0, num_seqs_pad - 1)
    item_valid = w < cu_blocks[-1]  # bool[N]
    first = cu[item_seq] + (w - cu_blocks[item_seq]) * block_q  # i32[N]: first query's token
    token = first[:, None] + jnp.arange(block_q, dtype=jnp.int32)[None, :]  # i32[N, B]
    is_query = (token < cu[item_seq + 1][:, None]) & item_valid[:, None]  # bool[N, B]
    pos = kv_lens[item_seq][:, None] - q_lens[item_seq][:, None] + token - cu[item_seq][:, None]
    pos = jnp.where(is_query, pos, -1)  # i32[N, B]
    safe_token = jnp.where(is_query, token, 0)
    state = _online_softmax_over_pages(
        qg[safe_token], pos, page_table[item_seq], jnp.where(item_valid, kv_lens[item_seq], 0),
        kv_pages, window, cap, pages_per_iter,
    )  # [N, B, Hkv, G(, D)] each
    # each real token is in exactly one block: scatter the blocks back to token order
    dest = jnp.where(is_query, token, num_tokens)
    return _scatter_state(state, dest, qg.shape)


def _in_step(qg, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, window, cap):
    """The step's own keys, attended by a dense masked product over all T x T token pairs.

    A prefill chunk's keys are the ones this step just wrote, so they are read back by slot
    (one row per token) instead of page by page; a [T, T] product per KV head is a few large dots
    where walking the pages would be many small ones.
    """
    num_tokens = qg.shape[0]
    page_size = kv_pages.shape[3]
    seq_ids, pos, valid = token_metadata(cu_q_lens, kv_lens, num_seqs, num_tokens)  # [T] each
    safe_pos = jnp.maximum(pos, 0)
    page = page_table[seq_ids, safe_pos // page_size]  # i32[T]
    kv = for_products(kv_pages[page, :, :, safe_pos % page_size])  # f32|bf16[T, 2, Hkv, D]
    # a padding token's slot may hold anything (NaN included): zero it rather than weigh it 0
    kv = jnp.where(valid[:, None, None, None], kv, jnp.zeros((), kv.dtype))
    # a sequence's tokens are contiguous and in position order, so query t sees exactly the
    # tokens first[t] .. t of the step (first: its sequence's first token; past t when padding).
    # Only iota compares remain per [T, T] element: XLA:CPU fuses the mask into each consumer,
    # and a mask built from seq_ids/pos pairs there made a prefill step 3x slower.
    first = jnp.where(valid, sanitize_cu_q_lens(cu_q_lens, num_seqs)[seq_ids], num_tokens)  # i32[T]
    t = jnp.arange(num_tokens, dtype=jnp.int32)
    mask = (t[None, :] >= first[:, None]) & (t[None, :] <= t[:, None])  # bool[T, T]: t sees u
    if window is not None:
        mask &= t[None, :] > t[:, None] - window
    bias = jnp.where(mask, 0.0, _MASK_VALUE)[:, None, :]  # f32[T, 1, T]
    num_kv_heads, group, head_dim = qg.shape[1:]
    state = []
    # one plain 2-D product per KV head: XLA:CPU runs those as large matmuls, while a dot with a
    # head batch dimension measured 2-3x slower. Causal within the step: the queries of rows
    # r0 .. r1 - 1 see no token past r1 - 1, so each block of ROW_BLOCK rows takes only the keys
    # up to its last row (a 256-token step: 3/4 of the [T, T] products)
    for h in range(num_kv_heads):
        k, v = kv[:, 0, h], kv[:, 1, h]  # [T, D]
        blocks = []
        for r0 in range(0, num_tokens, ROW_BLOCK):
            r1 = min(r0 + ROW_BLOCK, num_tokens)
            q = qg[r0:r1, h].reshape((r1 - r0) * group, head_dim)  # [R * G, D]
            s = jnp.dot(q.astype(k.dtype), k[:r1].T, preferred_element_type=jnp.float32
                        ).reshape(r1 - r0, group, r1)  # f32[R, G, r1]
            if cap is not None:
                s = cap * jnp.tanh(s / cap)
            s = s + bias[r0:r1, :, :r1]  # a masked key's exp(s - m) underflows to exactly 0
            m = s.max(axis=-1)  # f32[R, G]
            p = jnp.exp(s - m[..., None])
            acc = jnp.dot(p.reshape((r1 - r0) * group, r1).astype(v.dtype), v[:r1],
                          preferred_element_type=jnp.float32).reshape(r1 - r0, group, head_dim)
            blocks.append((m, p.sum(axis=-1), acc))
        state.append(tuple(jnp.concatenate(x, axis=0) for x in zip(*blocks)))
    m, l, acc = (jnp.stack(x, axis=1) for x in zip(*state))  # [T, Hkv, G(, D)] each
    # a chunk's token always sees itself; a padding token sees nothing and must weigh nothing
    # (its query row may be NaN garbage, so its max is replaced too); a single query (a decode)
    # takes its own key from its page walk, so its row here is dropped too
    in_chunk = valid & (_q_lens(cu_q_lens, num_seqs)[seq_ids] > 1)  # bool[T]
    keep = in_chunk[:, None, None]  # bool[T, 1, 1]
    return (jnp.where(keep, m, _MASK_VALUE), jnp.where(keep, l, 0.0),
            jnp.where(keep[..., None], acc, 0.0))


def _single_queries(qg, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, window, cap,
                    pages_per_iter):
    """Sequences with exactly one query (decodes) walk all their keys, their own included, one
    row per sequence. Returns the rows' online-softmax states, [S, Hkv, G(, D)], and each row's
    token (T for a row without a single query)."""
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


def _prior_of_chunks(qg, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, window, cap,
                     key_block, row_block):
    """Earlier keys of the sequences with more than one query (prefill chunks).

    A chunk's queries all see the same earlier keys, so each chunk gathers its earlier keys once,
    ``key_block`` at a time, and its own queries score them up to ``row_block`` rows at a time,
    one plain [rows * G, key_block] product per KV head: the same large dots as ``_in_step``,
    where a walk per block of queries re-gathers the pages for each block and runs many small
    batched dots. Chunks, key blocks and row windows are ``fori_loop``s, so the program holds
    this code once whatever the number of chunks.
    """
    num_tokens, num_kv_heads, group, head_dim = qg.shape
    page_size = kv_pages.shape[3]
    max_pages = page_table.shape[1]
    # windows that tile the step (80 rows in a 160-token one): a 131-row chunk there then takes
    # two 80-row windows, not two of 128 (A/B: 0.88x on that step)
    rb = max(d for d in range(1, min(row_block, num_tokens) + 1) if num_tokens % d == 0)
    _, pos, valid = token_metadata(cu_q_lens, kv_lens, num_seqs, num_tokens)  # [T] each
    qg = jnp.where(valid[:, None, None, None], qg, 0.0)  # a padding query may be NaN garbage
    qg = qg.astype(product_dtype(kv_pages.dtype))  # once, not per chunk, key block and window
    cu = sanitize_cu_q_lens(cu_q_lens, num_seqs)  # i32[S + 1]: each chunk's first token row
    q_lens = _q_lens(cu_q_lens, num_seqs)  # i32[S]
    num_prior = jnp.where(q_lens > 1, kv_lens - q_lens, 0)  # i32[S]: 0 unless a chunk
    chunk_rows = jnp.argsort(-(num_prior > 0).astype(jnp.int32))  # i32[S]: chunks with some first
    offsets = jnp.arange(key_block, dtype=jnp.int32)  # i32[KB]
    in_window = jnp.arange(rb, dtype=jnp.int32)  # i32[RB]

    def one_chunk(i, state):
        row = chunk_rows[i]
        first, end = cu[row], cu[row + 1]  # the chunk's token rows: first .. end - 1

        def one_block(j, state):
            key_pos = j * key_block + offsets  # i32[KB]
            page = page_table[row, jnp.minimum(key_pos // page_size, max_pages - 1)]  # i32[KB]
            kv = for_products(kv_pages[page, :, :, key_pos % page_size])  # f32|bf16[KB, 2, Hkv, D]
            in_cache = key_pos < num_prior[row]  # bool[KB]
            kv = jnp.where(in_cache[:, None, None, None], kv, jnp.zeros((), kv.dtype))  # unwritten: 0

            def one_window(w, state):
                # rows lo .. lo + rb - 1 of the chunk; the slice start is clamped to fit the
                # step, so rows before lo (done by the previous window) are masked out
                lo = first + w * rb
                start = jnp.minimum(lo, num_tokens - rb)
                t = start + in_window  # i32[RB]
                rows = (t >= lo) & (t < end)  # bool[RB]
                m, l, acc = (jax.lax.dynamic_slice_in_dim(x, start, rb) for x in state)
                q = jax.lax.dynamic_slice_in_dim(qg, start, rb)  # [RB, Hkv, G, D]
                mask = rows[:, None] & in_cache[None, :]  # bool[RB, KB]
                if window is not None:
                    p_t = jax.lax.dynamic_slice_in_dim(pos, start, rb)
                    mask &= key_pos[None, :] > p_t[:, None] - window
                bias = jnp.where(mask, 0.0, _MASK_VALUE)[:, None, :]  # f32[RB, 1, KB]
                heads = []
                for h in range(num_kv_heads):  # plain 2-D products: see _in_step
                    k, v = kv[:, 0, h], kv[:, 1, h]  # [KB, D]
                    sc = jnp.dot(q[:, h].reshape(rb * group, head_dim), k.T,
                                 preferred_element_type=jnp.float32).reshape(
                        rb, group, key_block)  # f32[RB, G, KB]
                    if cap is not None:
                        sc = cap * jnp.tanh(sc / cap)
                    sc = sc + bias
                    m_new = jnp.maximum(m[:, h], sc.max(axis=-1))  # f32[RB, G]
                    p = jnp.exp(sc - m_new[..., None]) * mask[:, None, :]  # masked keys weigh 0
                    alpha = jnp.exp(m[:, h] - m_new)
                    pv = jnp.dot(p.reshape(rb * group, key_block).astype(v.dtype), v,
                                 preferred_element_type=jnp.float32).reshape(rb, group, head_dim)
                    heads.append((m_new, alpha * l[:, h] + p.sum(axis=-1),
                                  alpha[..., None] * acc[:, h] + pv))
                new = (jnp.stack(x, axis=1) for x in zip(*heads))
                return tuple(jax.lax.dynamic_update_slice_in_dim(whole, part, start, axis=0)
                             for whole, part in zip(state, new))

            return jax.lax.fori_loop(0, (end - first + rb - 1) // rb, one_window, state)

        return jax.lax.fori_loop(0, (num_prior[row] + key_block - 1) // key_block, one_block,
                                 state)

    return jax.lax.fori_loop(0, jnp.sum(num_prior > 0), one_chunk, _empty_state(qg.shape))


def _mixed(qg, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, window, cap,
           pages_per_iter, key_block, chunks=True):
    """Any mix of decodes and prefill chunks: single queries walk their pages; when the step
    has a chunk, the step's own keys go through the dense product and each chunk's earlier keys
    through its gathers, and the states merge.

    Past ``WALK_IN_BRANCHES_UP_TO`` tokens the walk sits outside the ``lax.cond``, so the
    program holds it once per layer rather than once per branch (SmolLM2's attention: 2618 ->
    2219 HLO instructions in a 16-token step; warm engine build 11.3 -> 9.1 s, RSS when ready
    3.59 -> 3.08 GiB; steps 0.98x at 16 decodes, 1.03x for a 128-token chunk). Smaller programs
    keep a walk in each branch: XLA:CPU ran a 4-decode step 5% faster that way (A/B, 0.947x and
    0.956x), for one more walk in the 4-token program. A 1-token program has no chunk branch.
    """
    args = (qg, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, window, cap)
    has_chunk = jnp.max(_q_lens(cu_q_lens, num_seqs)) > 1

    def walk():
        return _single_queries(*args, pages_per_iter)

    def decode_only(rows, dest):  # each row's output straight to its token
        return jnp.zeros(qg.shape, jnp.float32).at[dest].set(_normalize(*rows), mode="drop")

    def with_chunks(rows, dest):
        walked = _scatter_state(rows, dest, qg.shape)
        return _normalize(*_merge(_merge(walked, _in_step(*args)),
                                  _prior_of_chunks(*args, key_block, ROW_BLOCK)))

    if qg.shape[0] == 1 or not chunks:  # no chunk possible (one token) or wanted: no chunk code
        return decode_only(*walk())
    if qg.shape[0] <= WALK_IN_BRANCHES_UP_TO:
        return jax.lax.cond(has_chunk, lambda: with_chunks(*walk()), lambda: decode_only(*walk()))
    rows, dest = walk()
    return jax.lax.cond(has_chunk, lambda: with_chunks(rows, dest),
                        lambda: decode_only(rows, dest))


def _all_through_pages(*args, block_q, pages_per_iter):
    return _normalize(*_blocked(*args, block_q=block_q, pages_per_iter=pages_per_iter))


# Jitted like the Pallas kernels: every layer calls these with the same shapes, so a model step
# traces each once instead of once per layer (XLA inlines the call). Measured on SmolLM2's
# 160-token bucket: 3.6 of the 5.4 s lowering took were 30 identical traces of the attention.
@functools.partial(jax.jit, static_argnames=(
    "sm_scale", "sliding_window", "logits_soft_cap", "block_q", "pages_per_iter",
    "max_dense_tokens", "key_block",
))
def ref_ragged_paged_attention(
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
    block_q: int = 16,  # queries per page walk in steps longer than max_dense_tokens
    pages_per_iter: int | None = None,  # pages per walk iteration; None: PAGES_PER_ITER, or
                                        # LONE_DECODE_PAGES_PER_ITER for a one-token step
    max_dense_tokens: int = 512,  # steps of up to this many tokens attend to their own keys densely
    key_block: int = 256,  # earlier keys per gather for a prefill chunk
) -> jax.Array:  # [T, Hq, D]
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = kv_pages.shape[2]
    if pages_per_iter is None:
        pages_per_iter = LONE_DECODE_PAGES_PER_ITER if num_tokens == 1 else PAGES_PER_ITER
    group = num_q_heads // num_kv_heads
    # [T, Hkv, G, D]: query heads grouped under the KV head they share (GQA)
    qg = (q.astype(jnp.float32) * sm_scale).reshape(num_tokens, num_kv_heads, group, head_dim)
    args = (qg, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, sliding_window, logits_soft_cap)
    mixed = functools.partial(_mixed, *args, pages_per_iter=pages_per_iter, key_block=key_block)
    if num_tokens <= max_dense_tokens:
        out = mixed()
    else:  # the dense product is O(T^2): past max_dense_tokens, a chunk's keys go through walks
        out = jax.lax.cond(jnp.max(_q_lens(cu_q_lens, num_seqs)) <= 1,
                           functools.partial(mixed, chunks=False),
                           functools.partial(_all_through_pages, *args, block_q=block_q,
                                             pages_per_iter=pages_per_iter))
    return out.reshape(num_tokens, num_q_heads, head_dim).astype(q.dtype)


@jax.jit
def ref_update_kv_pages(
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
