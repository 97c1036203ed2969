"""Pure-jnp ragged paged attention: the test oracle and the CPU fallback.

Layout shared with the Pallas kernel (``kernel.py``) and the model:

    q            f32|bf16[T, Hq, D]                       tokens of all sequences, concatenated
    kv_pages     f32|bf16[num_pages, 2, Hkv, page_size, D] one layer's cache; [:, 0] is K, [:, 1] is V
    kv_lens      i32[S]                                    tokens in the cache for each sequence,
                                                           counting this step's new ones
    page_table   i32[S, P]                                 page ids of each sequence, in order
    cu_q_lens    i32[S + 1]                                query offsets: sequence s owns
                                                           q[cu_q_lens[s]:cu_q_lens[s + 1]]
    num_seqs     i32[1]                                    sequences in use; rows >= num_seqs are padding

Query i of a sequence with q_len queries and kv_len keys sits at position kv_len - q_len + i and
attends causally to keys 0..kv_len - q_len + i. Tokens past cu_q_lens[num_seqs] are padding: their
output is zero. A sequence with q_len == 0 contributes nothing.

The reference walks the pages with an online softmax (a ``fori_loop`` up to the longest sequence's
page count), gathering for every query token the page its sequence has at that index. Memory stays
O(T * page_size) per iteration whatever the context length, so it also serves as the CPU fallback.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_MASK_VALUE = -1e30  # finite, so a fully masked row gives exp(...) == 0 rather than NaN


def sanitize_cu_q_lens(
    cu_q_lens: jax.Array,  # i32[S + 1]
    num_seqs: jax.Array,  # i32[1]
) -> jax.Array:  # i32[S + 1], entries past num_seqs equal to cu_q_lens[num_seqs]
    """Padding rows own no queries, whatever their cu_q_lens entries say."""
    num_seqs_s = num_seqs.reshape(())
    rows = jnp.arange(cu_q_lens.shape[0], dtype=jnp.int32)  # i32[S + 1]
    return jnp.where(rows <= num_seqs_s, cu_q_lens, cu_q_lens[num_seqs_s])


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
) -> jax.Array:  # [T, Hq, D]
    num_tokens, num_q_heads, head_dim = q.shape
    _, _, num_kv_heads, page_size, _ = kv_pages.shape
    group = num_q_heads // num_kv_heads
    seq_ids, pos, valid = token_metadata(cu_q_lens, kv_lens, num_seqs, num_tokens)

    # [T, Hkv, G, D]: query heads grouped under the KV head they share (GQA)
    qg = (q.astype(jnp.float32) * sm_scale).reshape(num_tokens, num_kv_heads, group, head_dim)
    token_pages = page_table[seq_ids]  # i32[T, P]
    seq_kv_lens = jnp.where(valid, kv_lens[seq_ids], 0)  # i32[T]
    num_pages_needed = (jnp.max(seq_kv_lens) + page_size - 1) // page_size

    def body(j, carry):
        m, l, acc = carry  # f32[T, Hkv, G], f32[T, Hkv, G], f32[T, Hkv, G, D]
        kv = kv_pages[token_pages[:, j]].astype(jnp.float32)  # [T, 2, Hkv, page_size, D]
        k, v = kv[:, 0], kv[:, 1]  # [T, Hkv, page_size, D]
        key_pos = j * page_size + jnp.arange(page_size, dtype=jnp.int32)  # i32[page_size]
        # slots past kv_len were never written for this sequence (a reused page may hold a dead
        # request's inf/NaN); 0 * NaN is NaN, so a zero weight alone would not hide them
        in_cache = key_pos[None, :] < seq_kv_lens[:, None]  # bool[T, page_size]
        v = jnp.where(in_cache[:, None, :, None], v, 0.0)
        s = jnp.einsum("thgd,thkd->thgk", qg, k)  # f32[T, Hkv, G, page_size]
        if logits_soft_cap is not None:
            s = logits_soft_cap * jnp.tanh(s / logits_soft_cap)
        mask = (key_pos[None, :] <= pos[:, None]) & in_cache
        if sliding_window is not None:
            mask &= key_pos[None, :] > pos[:, None] - sliding_window
        s = jnp.where(mask[:, None, None, :], s, _MASK_VALUE)
        m_new = jnp.maximum(m, s.max(axis=-1))
        p = jnp.exp(s - m_new[..., None]) * mask[:, None, None, :]  # masked keys weigh exactly 0
        alpha = jnp.exp(m - m_new)
        l_new = alpha * l + p.sum(axis=-1)
        acc_new = alpha[..., None] * acc + jnp.einsum("thgk,thkd->thgd", p, v)
        return m_new, l_new, acc_new

    init = (
        jnp.full((num_tokens, num_kv_heads, group), _MASK_VALUE, jnp.float32),
        jnp.zeros((num_tokens, num_kv_heads, group), jnp.float32),
        jnp.zeros((num_tokens, num_kv_heads, group, head_dim), jnp.float32),
    )
    _, l, acc = jax.lax.fori_loop(0, num_pages_needed, body, init)
    out = acc / jnp.where(l == 0.0, 1.0, l)[..., None]  # rows with no keys (padding) stay 0
    return out.reshape(num_tokens, num_q_heads, head_dim).astype(q.dtype)


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
    kv = jnp.stack([k, v], axis=1).astype(kv_pages.dtype)  # [T, 2, Hkv, D]
    return kv_pages.at[page, :, :, offset, :].set(kv, mode="drop")
