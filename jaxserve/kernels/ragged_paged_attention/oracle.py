"""The oracle: ragged paged attention and the K/V page write the plainest way, in float64 numpy.

Same arguments and semantics as the Pallas kernel (``kernel.py``) and the CPU backend
(``cpu_attention.py``, whose docstring has the layout); a loop over sequences that gathers each
one's keys in order and takes a masked softmax. Slow and obviously right: tests compare both
backends to it on fresh random inputs. Not jittable, never used to serve.
"""

from __future__ import annotations

import jax.numpy as jnp  # for its bfloat16 numpy dtype
import numpy as np


def _widen(x) -> np.ndarray:  # any float array, or bfloat16 kept as uint16 bits -> float64
    x = np.asarray(x)
    return (x.view(jnp.bfloat16) if x.dtype == np.uint16 else x).astype(np.float64)


def ragged_paged_attention(
    q,  # f32|bf16[T, Hq, D]
    kv_pages,  # f32|bf16|u16[num_pages, 2, Hkv, page_size, D]; u16: bfloat16 bits
    kv_lens,  # i32[S]
    page_table,  # i32[S, P]
    cu_q_lens,  # i32[S + 1]
    num_seqs,  # i32[1]
    *,
    sm_scale: float,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
) -> np.ndarray:  # f64[T, Hq, D]: float64 whatever q's dtype; padding tokens are 0
    q, kv_pages = _widen(q), _widen(kv_pages)
    kv_lens, page_table, cu_q_lens = (np.asarray(x) for x in (kv_lens, page_table, cu_q_lens))
    _, _, num_kv_heads, page_size, _ = kv_pages.shape
    group = q.shape[1] // num_kv_heads
    out = np.zeros_like(q)
    for s in range(int(np.asarray(num_seqs)[0])):
        start, end, kv_len = cu_q_lens[s], cu_q_lens[s + 1], kv_lens[s]
        if end == start:  # keys but no queries this step
            continue
        key_pos = np.arange(kv_len)  # i[K]
        pages, offsets = page_table[s, key_pos // page_size], key_pos % page_size  # i[K] each
        # query head h reads KV head h // group (GQA)
        k = np.repeat(kv_pages[pages, 0, :, offsets], group, axis=1)  # f64[K, Hq, D]
        v = np.repeat(kv_pages[pages, 1, :, offsets], group, axis=1)  # f64[K, Hq, D]
        q_pos = kv_len - (end - start) + np.arange(end - start)  # i[Q]: the queries' positions
        logits = np.einsum("qhd,khd->hqk", q[start:end], k) * sm_scale  # f64[Hq, Q, K]
        if logits_soft_cap is not None:
            logits = logits_soft_cap * np.tanh(logits / logits_soft_cap)
        seen = key_pos[None, :] <= q_pos[:, None]  # bool[Q, K]: causal
        if sliding_window is not None:
            seen &= key_pos[None, :] > q_pos[:, None] - sliding_window
        logits = np.where(seen, logits, -np.inf)  # every query sees at least its own key
        weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        out[start:end] = np.einsum("hqk,khd->qhd", weights, v)
    return out


def update_kv_pages(
    kv_pages,  # f32|bf16|u16[num_pages, 2, Hkv, page_size, D]; u16: bfloat16 bits
    k,  # f32|bf16[T, Hkv, D]
    v,  # f32|bf16[T, Hkv, D]
    slot_mapping,  # i32[T]: page * page_size + offset; -1 (or past the cache) writes nothing
) -> np.ndarray:  # [num_pages, 2, Hkv, page_size, D] in kv_pages' dtype: a new array
    out = np.array(kv_pages)
    num_pages, _, _, page_size, _ = out.shape
    if out.dtype == np.uint16:  # the cache keeps bfloat16 bits: store each value's rounding
        k, v = (np.asarray(x).astype(jnp.bfloat16).view(np.uint16) for x in (k, v))
    else:
        k, v = (np.asarray(x).astype(out.dtype) for x in (k, v))
    for t, slot in enumerate(np.asarray(slot_mapping)):
        if 0 <= slot < num_pages * page_size:
            page, offset = divmod(int(slot), page_size)
            out[page, 0, :, offset] = k[t]
            out[page, 1, :, offset] = v[t]
    return out
