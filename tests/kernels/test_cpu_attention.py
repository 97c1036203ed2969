"""The CPU backend (``cpu_attention.py``) against the oracle on fresh random inputs: the shared
cases, then each of its paths (dense in-step products, prior keys per chunk, page walks, rows
per walk, row blocks) and the shapes that steer them. Inputs: ``tests/support/attention_inputs.py``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve.kernels.ragged_paged_attention import (
    cpu_ragged_paged_attention,
    cpu_update_kv_pages,
    tuned,
)
from tests.support.attention_inputs import (
    CASES,
    Config,
    cases,
    check_against_oracle,
    check_kv_write,
    check_padding_is_ignored,
    configs,
    make_inputs,
    verification_lens,
)

SMALL = Config(jnp.float32, 6, 2, 16)  # the path tests' heads: GQA 3, head_dim 16


def check(cfg: Config, q_lens, kv_lens, seed: int, **kw):
    args, num_real = make_inputs(cfg, q_lens, kv_lens, seed=seed)
    kw = {"sm_scale": cfg.head_dim**-0.5, **kw}
    check_against_oracle(cpu_ragged_paged_attention(*args, **kw), args, num_real, cfg.tol, **kw)


def check_paths(args, num_real, **kw):  # f32 inputs, sm_scale and the backend's knobs in kw
    names = ("max_dense_tokens", "key_block", "pages_per_iter", "block_q")
    knobs = {k: kw.pop(k) for k in names if k in kw}
    check_against_oracle(cpu_ragged_paged_attention(*args, **kw, **knobs), args, num_real, 1e-5,
                         **kw)


@configs
@cases
def test_against_the_oracle(cfg, case):  # decode_only, prefill_only, mixed, chunked_prefill, ...
    check(cfg, *CASES[case])


@configs
@pytest.mark.parametrize("q", range(2, 10))
def test_verification_rows_across_page_boundaries(cfg, q):
    """Speculative decoding's verification rows of q queries beside decodes and a chunk, their
    queries straddling a page boundary, give the oracle's answer."""
    check(cfg, *verification_lens(q), seed=30 + q)


@pytest.mark.parametrize("q", range(2, 10))
@pytest.mark.parametrize("max_dense_tokens", [512, 0], ids=["dense-in-step", "all-pages"])
def test_verification_rows_dense_in_step_or_all_through_pages(q, max_dense_tokens):
    """Verification rows take the chunks' paths: the dense in-step product with their earlier
    keys per chunk, or every key through a page walk in blocks of queries (``_blocked``, here
    with block_q 4 so a row of 9 spans three blocks); with a window and a soft cap too."""
    args, num_real = make_inputs(SMALL, *verification_lens(q), seed=40 + q)
    for window, cap in [(None, None), (7, 3.0)]:
        check_paths(args, num_real, sm_scale=0.3, sliding_window=window, logits_soft_cap=cap,
                    max_dense_tokens=max_dense_tokens, block_q=4)


@configs
def test_padding_does_not_change_real_rows(cfg):
    check_padding_is_ignored(cfg, lambda args: cpu_ragged_paged_attention(*args, sm_scale=cfg.head_dim**-0.5))


@pytest.mark.parametrize("page_size", [8, 32])
def test_other_page_sizes(page_size):
    check(Config(jnp.float32, 6, 2, 64, page_size=page_size), [1, 9, 1, 4], [20, 9, 31, 30],
          seed=11)


def test_sliding_window_and_soft_cap():
    check(Config(jnp.float32, 6, 2, 64), [1, 12, 3], [40, 30, 20], seed=12, sliding_window=19,
          logits_soft_cap=5.0)


@pytest.mark.parametrize(
    "window_cap", [(None, None), (5, 3.0)], ids=["plain", "window-softcap"]
)
@pytest.mark.parametrize(
    "lens", [([1, 0, 6, 3], [9, 4, 6, 20]), ([1, 1, 0, 1], [9, 33, 4, 1]), ([40], [50])],
    ids=["mixed", "decode-only", "long-prefill"],
)
@pytest.mark.parametrize("max_dense_tokens", [512, 0], ids=["dense-in-step", "all-pages"])
def test_dense_in_step_or_all_through_pages(window_cap, lens, max_dense_tokens):
    sliding_window, logits_soft_cap = window_cap
    args, num_real = make_inputs(SMALL, *lens, seed=14)
    check_paths(args, num_real, sm_scale=0.3, sliding_window=sliding_window,
                logits_soft_cap=logits_soft_cap, max_dense_tokens=max_dense_tokens)


@pytest.mark.parametrize(
    "lens", [([1, 0, 6, 3], [9, 4, 6, 20]), ([12, 1], [60, 50]), ([5, 7, 9, 1], [30, 40, 9, 50]),
             ([40], [64])],
    ids=["mixed", "chunk-and-decode", "three-chunks", "long-prior"],
)
@pytest.mark.parametrize("key_block", [16, 32, 256])
def test_prior_keys_per_chunk(lens, key_block):
    """Earlier keys gathered once per prefill chunk, ``key_block`` at a time (several chunks in
    one step, single-query rows beside them, priors crossing key blocks), give the oracle's
    answer, with a window and a soft cap too, and padding rows stay exactly 0."""
    args, num_real = make_inputs(SMALL, *lens, seed=15)
    for window, cap in [(None, None), (7, 3.0)]:
        check_paths(args, num_real, sm_scale=0.3, sliding_window=window, logits_soft_cap=cap,
                    key_block=key_block)


def test_decode_with_fewer_tokens_than_rows():
    """Decode walks sequence rows when S <= T and token rows otherwise: both give the oracle's
    answer."""
    args, num_real = make_inputs(SMALL, [1, 1, 0, 1], [9, 33, 4, 1], seed=3)
    short = (args[0][:4],) + args[1:]  # 4 token rows < 6 sequence rows
    for call_args in (args, short):
        check_paths(call_args, num_real, sm_scale=0.3)


@pytest.mark.parametrize("rows_per_walk", [1, 4, 64])
def test_rows_walk_the_pages_a_few_at_a_time(monkeypatch, request, rows_per_walk):
    """Decode rows and single-query rows beside a chunk walk the pages ROWS_PER_WALK at a time,
    each walk to its own furthest key; a row count that is not a multiple, walks that stop at
    different pages, and padding rows with garbage page tables all give the oracle's answer."""
    monkeypatch.setattr(tuned, "ROWS_PER_WALK", rows_per_walk)
    # the backend is jitted: drop traces made with another ROWS_PER_WALK, and ours after
    cpu_ragged_paged_attention.clear_cache()
    request.addfinalizer(cpu_ragged_paged_attention.clear_cache)
    for lens in (([1, 1, 1, 0, 1, 1], [9, 60, 2, 4, 33, 1]), ([1, 5, 1, 1, 1], [40, 9, 3, 64, 17])):
        args, num_real = make_inputs(SMALL, *lens, seed=21)
        for max_dense_tokens in (512, 0):
            check_paths(args, num_real, sm_scale=0.3, max_dense_tokens=max_dense_tokens)


@pytest.mark.parametrize("lens", [([1, 1, 1], [9, 33, 20]), ([3, 1], [10, 20])],
                         ids=["decodes", "chunk-and-decode"])
def test_bucket_with_fewer_tokens_than_sequence_rows(lens):
    """A bucket may pad to fewer tokens than sequence rows (T < S), and a step this small holds
    the decode walk in each branch (WALK_IN_BRANCHES_UP_TO): decodes still walk their sequence
    rows, a chunk beside them takes the dense path, and both give the oracle's answer."""
    args, num_real = make_inputs(SMALL, *lens, seed=16)
    q = args[0][:4]  # 4 token rows against S_PAD = 6 sequence rows
    args = (q, *args[1:])
    assert np.asarray(cpu_ragged_paged_attention(*args, sm_scale=0.3)).shape == q.shape
    check_paths(args, num_real, sm_scale=0.3, sliding_window=None, logits_soft_cap=None)


@pytest.mark.parametrize("row_block", [3, 5, 8, 16])  # 5: windows of 4, which tile T_PAD = 48
def test_row_blocks(monkeypatch, request, row_block):
    """Chunks score their earlier keys ROW_BLOCK token rows at a time (a window whose start is
    clamped to fit the step, so it may reach back over rows already done), and the dense in-step
    product gives each block of ROW_BLOCK rows only the keys up to its last row. Chunks spanning
    several windows, a chunk that ends the step, windows straddling two chunks, decodes between
    them, a sliding window and a soft cap all give the oracle's answer."""
    monkeypatch.setattr(tuned, "ROW_BLOCK", row_block)
    cpu_ragged_paged_attention.clear_cache()
    request.addfinalizer(cpu_ragged_paged_attention.clear_cache)
    for lens in (([7, 1, 10, 3, 2], [40, 30, 60, 3, 50]),  # the last chunk ends at row 23
                 ([13, 1, 9], [13, 9, 41]),
                 ([20, 1, 25], [20, 30, 60])):  # the last chunk's windows clamp at T_PAD = 48
        args, num_real = make_inputs(SMALL, *lens, seed=23)
        for window, cap in [(None, None), (7, 3.0)]:
            check_paths(args, num_real, sm_scale=0.3, sliding_window=window, logits_soft_cap=cap,
                        key_block=16)


@pytest.mark.parametrize("kv_len", [1, 256, 300], ids=["first-key", "one-walk", "two-walks"])
@pytest.mark.parametrize("pages_per_iter", [None, 8], ids=["lone-default", "eight"])
def test_one_token_step_walks_its_pages(kv_len, pages_per_iter):
    """A one-token step (the lone-decode bucket) walks LONE_DECODE_PAGES_PER_ITER pages per loop
    iteration by default: its answer is the oracle's whether the keys end inside the first
    walk, on its last slot or in a second one, with NaN in every slot it must not read and a
    page-table row that is not a multiple of the walk's width."""
    rng, ps, hkv, d, pages_per_row, num_pages = np.random.default_rng(21), 16, 2, 16, 24, 40
    page_table = np.full((1, pages_per_row), 10**6, np.int32)  # garbage past the used pages
    used = -(-kv_len // ps)
    page_table[0, :used] = rng.permutation(num_pages)[:used]
    kv_pages = np.full((num_pages, 2, hkv, ps, d), np.nan)
    for j in range(kv_len):
        kv_pages[page_table[0, j // ps], :, :, j % ps] = rng.standard_normal((2, hkv, d))
    args = (jnp.asarray(rng.standard_normal((1, 6, d)), jnp.float32),  # [1, Hq, D]
            jnp.asarray(kv_pages, jnp.float32), jnp.asarray([kv_len], jnp.int32),
            jnp.asarray(page_table), jnp.asarray([0, 1], jnp.int32), jnp.asarray([1], jnp.int32))
    for window, cap in [(None, None), (37, 3.0)]:
        check_paths(args, 1, sm_scale=0.3, sliding_window=window, logits_soft_cap=cap,
                    pages_per_iter=pages_per_iter)


@pytest.mark.parametrize("lens", [
    ([0, 0, 0, 0, 0, 1, 1], [4, 9, 1, 3, 7, 40, 17]),  # the decodes sit past row T - 1
    ([0, 1, 2, 0, 1, 1, 1], [5, 33, 6, 2, 16, 1, 50]),  # decodes around a chunk and empty rows
], ids=["decodes-last", "interleaved"])
def test_single_query_rows_past_the_token_count_still_walk(lens):
    """A step with fewer tokens than sequence rows (the engine's buckets never have one, but the
    backend takes any): single-query rows past row T - 1, among rows without queries, a chunk
    and a padding row, still get the oracle's answer."""
    q_lens, kv_lens = lens
    rng, ps, hkv, d, pages_per_row, num_pages = np.random.default_rng(22), 16, 2, 16, 4, 40
    s_rows, t = len(q_lens) + 1, sum(q_lens)  # one padding row; T < S
    page_table = np.full((s_rows, pages_per_row), 10**6, np.int32)
    kv_pages = np.full((num_pages, 2, hkv, ps, d), np.nan)
    free = list(rng.permutation(num_pages))
    for s, kv_len in enumerate(kv_lens):
        for j in range(-(-kv_len // ps)):
            page_table[s, j] = free.pop()
        for j in range(kv_len):
            kv_pages[page_table[s, j // ps], :, :, j % ps] = rng.standard_normal((2, hkv, d))
    cu = np.concatenate([[0], np.cumsum(q_lens), [t]]).astype(np.int32)  # padding row: no query
    args = (jnp.asarray(rng.standard_normal((t, 6, d)), jnp.float32),  # [T, Hq, D]
            jnp.asarray(kv_pages, jnp.float32), jnp.asarray(kv_lens + [0], jnp.int32),
            jnp.asarray(page_table), jnp.asarray(cu), jnp.asarray([len(q_lens)], jnp.int32))
    check_paths(args, t, sm_scale=0.3)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_update_kv_pages(dtype):
    check_kv_write(cpu_update_kv_pages, dtype)
