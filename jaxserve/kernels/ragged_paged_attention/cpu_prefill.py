"""The CPU backend's dense products for prefill chunks: the step's own keys and each chunk's
earlier keys, as a few large plain dots per KV head (XLA:CPU's fast path) rather than page walks.

Both return an online-softmax state in token order, [T, Hkv, G(, D)], that ``cpu_attention.py``
merges with the decodes' page walks; the arguments follow the layout in its docstring.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxserve.kernels.ragged_paged_attention import tuned
from jaxserve.kernels.ragged_paged_attention.kv_storage import for_products, product_dtype
from jaxserve.kernels.ragged_paged_attention.ragged import (
    MASK_VALUE,
    empty_state,
    q_lens,
    sanitize_cu_q_lens,
    token_metadata,
)


def in_step(qg, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, window, cap):
    # arguments as cpu_attention._mixed's; returns its (max, sum, output) state over [T, Hkv, G]
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
    # and a mask built from seq_ids/pos pairs there runs a prefill step slower.
    first = jnp.where(valid, sanitize_cu_q_lens(cu_q_lens, num_seqs)[seq_ids], num_tokens)  # i32[T]
    t = jnp.arange(num_tokens, dtype=jnp.int32)
    mask = (t[None, :] >= first[:, None]) & (t[None, :] <= t[:, None])  # bool[T, T]: t sees u
    if window is not None:
        mask &= t[None, :] > t[:, None] - window
    bias = jnp.where(mask, 0.0, MASK_VALUE)[:, None, :]  # f32[T, 1, T]
    num_kv_heads, group, head_dim = qg.shape[1:]
    state = []
    # one plain 2-D product per KV head: XLA:CPU runs those as large matmuls, and a dot with a
    # head batch dimension runs slower. Causal within the step: the queries of rows r0 .. r1 - 1
    # see no token past r1 - 1, so each block of ROW_BLOCK rows takes only the keys up to its
    # last row
    for h in range(num_kv_heads):
        k, v = kv[:, 0, h], kv[:, 1, h]  # [T, D]
        blocks = []
        for r0 in range(0, num_tokens, tuned.ROW_BLOCK):
            r1 = min(r0 + tuned.ROW_BLOCK, num_tokens)
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
    in_chunk = valid & (q_lens(cu_q_lens, num_seqs)[seq_ids] > 1)  # bool[T]
    keep = in_chunk[:, None, None]  # bool[T, 1, 1]
    return (jnp.where(keep, m, MASK_VALUE), jnp.where(keep, l, 0.0),
            jnp.where(keep[..., None], acc, 0.0))


def prior_of_chunks(qg, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, window, cap,
                    key_block: int, row_block: int):
    # arguments as cpu_attention._mixed's; returns its (max, sum, output) state over [T, Hkv, G]
    """Earlier keys of the sequences with more than one query (prefill chunks).

    A chunk's queries all see the same earlier keys, so each chunk gathers its earlier keys once,
    ``key_block`` at a time, and its own queries score them up to ``row_block`` rows at a time,
    one plain [rows * G, key_block] product per KV head: the same large dots as ``in_step``,
    where a walk per block of queries re-gathers the pages for each block and runs many small
    batched dots. Chunks, key blocks and row windows are ``fori_loop``s, so the program holds
    this code once whatever the number of chunks.
    """
    num_tokens, num_kv_heads, group, head_dim = qg.shape
    page_size = kv_pages.shape[3]
    max_pages = page_table.shape[1]
    # windows that tile the step (80 rows in a 160-token one): a 131-row chunk there then takes
    # two 80-row windows, not two of 128 whose clamped starts overlap more rows
    rb = max(d for d in range(1, min(row_block, num_tokens) + 1) if num_tokens % d == 0)
    _, pos, valid = token_metadata(cu_q_lens, kv_lens, num_seqs, num_tokens)  # [T] each
    qg = jnp.where(valid[:, None, None, None], qg, 0.0)  # a padding query may be NaN garbage
    qg = qg.astype(product_dtype(kv_pages.dtype))  # once, not per chunk, key block and window
    cu = sanitize_cu_q_lens(cu_q_lens, num_seqs)  # i32[S + 1]: each chunk's first token row
    lens = q_lens(cu_q_lens, num_seqs)  # i32[S]
    num_prior = jnp.where(lens > 1, kv_lens - lens, 0)  # i32[S]: 0 unless a chunk
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
                bias = jnp.where(mask, 0.0, MASK_VALUE)[:, None, :]  # f32[RB, 1, KB]
                heads = []
                for h in range(num_kv_heads):  # plain 2-D products: see in_step
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

    return jax.lax.fori_loop(0, jnp.sum(num_prior > 0), one_chunk, empty_state(qg.shape))
