"""The oracle on inputs whose answers are known by hand: the yardstick needs its own check."""

from __future__ import annotations

import numpy as np

from jaxserve.kernels.ragged_paged_attention import oracle


def two_sequences(q):  # q f32[5, Hq=4, D=8] -> the oracle's inputs: 2 sequences, 2 KV heads
    rng = np.random.default_rng(0)
    kv_pages = rng.standard_normal((6, 2, 2, 4, 8))  # [num_pages, 2, Hkv, page_size, D]
    kv_lens = np.array([6, 2, 99], np.int32)  # row 2 is padding
    page_table = np.array([[4, 1], [2, 0], [5, 5]], np.int32)
    cu_q_lens = np.array([0, 3, 5, 5], np.int32)  # 3 queries at positions 3..5, then 2 at 0..1
    return q, kv_pages, kv_lens, page_table, cu_q_lens, np.array([2], np.int32)


def keys_of(kv_pages, pages, n, which):  # -> f64[n, Hkv, D]: a sequence's first n K or V rows
    return np.stack([kv_pages[pages[j // 4], which, :, j % 4] for j in range(n)])


def test_zero_queries_average_the_visible_values():
    """All logits equal: each query's output is the mean of the values it may see (causal), and
    query head h reads KV head h // 2."""
    args = two_sequences(np.zeros((6, 4, 8)))  # one padding token at the end
    out = oracle.ragged_paged_attention(*args, sm_scale=1.0)
    kv_pages, page_table = args[1], args[3]
    v0, v1 = keys_of(kv_pages, page_table[0], 6, 1), keys_of(kv_pages, page_table[1], 2, 1)
    for t, (v, pos) in enumerate([(v0, 3), (v0, 4), (v0, 5), (v1, 0), (v1, 1)]):
        for h in range(4):
            np.testing.assert_allclose(out[t, h], v[: pos + 1, h // 2].mean(axis=0), rtol=1e-12)
    assert (out[5] == 0).all()


def test_window_of_one_sees_only_itself():
    args = two_sequences(np.random.default_rng(1).standard_normal((5, 4, 8)))
    out = oracle.ragged_paged_attention(*args, sm_scale=0.5, sliding_window=1)
    kv_pages, page_table = args[1], args[3]
    v0, v1 = keys_of(kv_pages, page_table[0], 6, 1), keys_of(kv_pages, page_table[1], 2, 1)
    for t, v in enumerate([v0[3], v0[4], v0[5], v1[0], v1[1]]):
        np.testing.assert_allclose(out[t], np.repeat(v, 2, axis=0), rtol=1e-12)


def test_update_kv_pages_writes_each_slot_and_skips_padding():
    kv_pages = np.zeros((2, 2, 1, 4, 3), np.float32)  # [num_pages, 2, Hkv, page_size, D]
    k = np.arange(9, dtype=np.float32).reshape(3, 1, 3) + 1  # [T, Hkv, D]
    out = oracle.update_kv_pages(kv_pages, k, -k, np.array([5, -1, 8], np.int32))  # 8: past
    np.testing.assert_array_equal(out[1, 0, 0, 1], k[0, 0])
    np.testing.assert_array_equal(out[1, 1, 0, 1], -k[0, 0])
    assert np.count_nonzero(out) == 6 and not kv_pages.any()  # a new array; input untouched
