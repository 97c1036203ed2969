"""The Pallas kernels (interpret mode on CPU) against the pure-jnp reference, and the reference
against a naive numpy loop.

Every case uses the same padded shapes per config (T_PAD tokens, S_PAD sequence rows, P pages
per row), the way the engine buckets its steps, so each config compiles once. Inputs are fresh
random numbers; everything that is padding (rows past num_seqs, tokens past the last real one,
page_table entries a sequence does not use, cache slots that hold no live key) is garbage, NaN
where it can be. Interpret mode fills a pallas_call's output with NaN before the kernel runs, so
a row the kernel forgets to write shows up as NaN (``test_interpret_mode_poisons_output`` keeps
that assumption honest).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from jaxserve.kernels.ragged_paged_attention import (
    ragged_paged_attention,
    cpu_ragged_paged_attention,
    cpu_update_kv_pages,
    update_kv_pages,
)
from jaxserve.kernels.ragged_paged_attention.select import get_attention_fns, resolve_backend

T_PAD = 48  # padded token count; not a power of two on purpose
S_PAD = 6  # sequence rows; the cases use at most 4, the rest are padding rows
P = 4  # pages per row of page_table
NUM_PAGES = 32


@dataclasses.dataclass(frozen=True)
class Config:
    dtype: type
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int = 16
    block_q: int | None = None  # None: the kernel's default
    pages_per_block: int | None = None

    @property
    def tol(self) -> float:
        return 1e-5 if self.dtype == jnp.float32 else 1e-2


# GQA ratios 1, 3 and 8, head dims 64 and 128, both dtypes; small block_q / pages_per_block in
# some configs so a prefill spans several work items and a sequence several loop steps
CONFIGS = {
    "f32-gqa1-d64": Config(jnp.float32, 2, 2, 64, block_q=16, pages_per_block=1),
    "f32-gqa3-d128": Config(jnp.float32, 6, 2, 128, block_q=4, pages_per_block=2),
    "bf16-gqa8-d64": Config(jnp.bfloat16, 8, 1, 64, block_q=2),
    "bf16-gqa3-d128": Config(jnp.bfloat16, 6, 2, 128),
}
configs = pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))


def make_inputs(cfg: Config, q_lens, kv_lens, *, seed: int, garbage: str = "nan"):
    """Real data from `seed`; padding from a separate stream, NaN where it can be ("nan")."""
    rng, junk = np.random.default_rng(seed), np.random.default_rng(seed + 7919 * len(garbage))
    n, ps = len(q_lens), cfg.page_size
    assert all(k >= q for q, k in zip(q_lens, kv_lens)) and sum(q_lens) <= T_PAD
    assert max(kv_lens) <= P * ps and n <= S_PAD
    num_real = sum(q_lens)

    cu_q_lens = junk.integers(-5, 100, S_PAD + 1).astype(np.int32)
    cu_q_lens[: n + 1] = np.concatenate([[0], np.cumsum(q_lens)])
    kv = junk.integers(-5, 1000, S_PAD).astype(np.int32)
    kv[:n] = kv_lens
    page_table = junk.integers(-100, 10**6, (S_PAD, P)).astype(np.int32)
    pages = rng.permutation(NUM_PAGES)
    live = np.zeros((NUM_PAGES, ps), bool)  # cache slots that hold a key of a real sequence
    for s, kv_len in enumerate(kv_lens):
        used = -(-kv_len // ps)
        page_table[s, :used] = pages[s * P : s * P + used]
        for j in range(kv_len):
            live[page_table[s, j // ps], j % ps] = True

    def fill(shape, real_mask):
        real = rng.standard_normal(shape)
        pad = np.full(shape, np.nan) if garbage == "nan" else 100 * junk.standard_normal(shape)
        return np.where(real_mask, real, pad)

    h, hkv, d = cfg.num_q_heads, cfg.num_kv_heads, cfg.head_dim
    q = fill((T_PAD, h, d), (np.arange(T_PAD) < num_real)[:, None, None])
    kv_pages = fill((NUM_PAGES, 2, hkv, ps, d), live[:, None, None, :, None])
    args = (
        jnp.asarray(q, cfg.dtype),
        jnp.asarray(kv_pages, cfg.dtype),
        jnp.asarray(kv),
        jnp.asarray(page_table),
        jnp.asarray(cu_q_lens),
        jnp.asarray([n], jnp.int32),
    )
    return args, num_real


def run_kernel(cfg: Config, args, **kw):
    return ragged_paged_attention(
        *args,
        sm_scale=cfg.head_dim**-0.5,
        block_q=cfg.block_q,
        pages_per_block=cfg.pages_per_block,
        **kw,
    )


# jitted so that same-shape calls reuse one executable; eager, every call re-traces its loop
_jit_reference = jax.jit(
    cpu_ragged_paged_attention, static_argnames=("sm_scale", "sliding_window", "logits_soft_cap")
)


def run_reference(cfg: Config, args, **kw):
    return _jit_reference(*args, sm_scale=cfg.head_dim**-0.5, **kw)


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def check_against_reference(cfg: Config, q_lens, kv_lens, *, seed: int = 0, **kw):
    args, num_real = make_inputs(cfg, q_lens, kv_lens, seed=seed)
    out = np.asarray(run_kernel(cfg, args, **kw), np.float32)
    ref = np.asarray(run_reference(cfg, args, **kw), np.float32)
    assert np.isfinite(out).all(), "a row was never written (NaN poison) or NaN garbage leaked"
    assert (out[num_real:] == 0).all(), "padding tokens must come out as zeros"
    assert np.isfinite(ref).all() and (ref[num_real:] == 0).all()
    assert rel_err(out[:num_real], ref[:num_real]) < cfg.tol


# (q_lens, kv_lens) per real sequence
@configs
def test_decode_only(cfg):
    check_against_reference(cfg, [1, 1, 1, 1], [5, 17, 33, 1], seed=1)


@configs
def test_prefill_only(cfg):
    check_against_reference(cfg, [7, 16, 20], [7, 16, 20], seed=2)


@configs
def test_mixed(cfg):
    check_against_reference(cfg, [1, 9, 1, 4], [20, 9, 40, 30], seed=3)


@configs
def test_chunked_prefill(cfg):
    # the second chunk of two prompts: queries start mid-sequence and mid-page
    check_against_reference(cfg, [8, 13], [24, 37], seed=4)


@configs
def test_page_boundaries(cfg):
    # last key on the last slot of a page, on the first slot of the next, one past
    check_against_reference(cfg, [1, 2, 3, 16], [16, 17, 33, 32], seed=5)


@configs
def test_single_token(cfg):
    check_against_reference(cfg, [1], [1], seed=6)


@configs
def test_every_page_of_the_table(cfg):
    check_against_reference(cfg, [1, 5], [P * cfg.page_size, P * cfg.page_size], seed=7)


@configs
def test_zero_q_len_sequence(cfg):
    # the middle sequence has keys but no queries this step: it must contribute nothing
    check_against_reference(cfg, [3, 0, 2, 0], [3, 10, 6, 4], seed=8)


@configs
def test_padding_does_not_change_real_rows(cfg):
    q_lens, kv_lens = [1, 9, 1, 4], [20, 9, 40, 30]
    a, num_real = make_inputs(cfg, q_lens, kv_lens, seed=9, garbage="nan")
    b, _ = make_inputs(cfg, q_lens, kv_lens, seed=9, garbage="random")
    assert not np.array_equal(np.asarray(a[2]), np.asarray(b[2]))  # the padding does differ
    for run in (run_kernel, run_reference):
        out_a, out_b = np.asarray(run(cfg, a)), np.asarray(run(cfg, b))
        np.testing.assert_array_equal(out_a[:num_real], out_b[:num_real])
        assert (out_a[num_real:] == 0).all() and (out_b[num_real:] == 0).all()


def test_default_block_sizes():
    cfg = Config(jnp.float32, 4, 2, 64)  # block_q=32, pages_per_block=4
    check_against_reference(cfg, [1, 30, 0, 12], [50, 30, 7, 12], seed=10)


@pytest.mark.parametrize("page_size", [8, 32])
def test_other_page_sizes(page_size):
    cfg = Config(jnp.float32, 6, 2, 64, page_size=page_size, block_q=8, pages_per_block=2)
    check_against_reference(cfg, [1, 9, 1, 4], [20, 9, 31, 30], seed=11)  # <= 4 pages of 8


def test_sliding_window_and_soft_cap():
    cfg = Config(jnp.float32, 6, 2, 64, block_q=4, pages_per_block=1)
    check_against_reference(
        cfg, [1, 12, 3], [40, 30, 20], seed=12, sliding_window=19, logits_soft_cap=5.0
    )


def test_interpret_mode_poisons_output():
    """The NaN checks above rely on interpret mode filling outputs with NaN."""

    def write_nothing(x_ref, o_ref):
        del x_ref, o_ref

    x = jnp.ones((16, 16), jnp.float32)
    out = pl.pallas_call(write_nothing, out_shape=x, interpret=True)(x)
    assert np.isnan(np.asarray(out)).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_update_kv_pages_matches_reference(dtype):
    rng = np.random.default_rng(13)
    num_pages, hkv, ps, d, t = 6, 2, 16, 64, 21  # 21 tokens: the last program is partial
    kv_pages = jnp.asarray(rng.standard_normal((num_pages, 2, hkv, ps, d)), dtype)
    k = jnp.asarray(rng.standard_normal((t, hkv, d)), dtype)
    v = jnp.asarray(rng.standard_normal((t, hkv, d)), dtype)
    slots = rng.permutation(num_pages * ps)[:t].astype(np.int32)
    slots[[3, 7, 20]] = -1  # padding tokens
    slots[5] = num_pages * ps - 1  # the very last slot of the cache
    slots = jnp.asarray(slots)
    out = update_kv_pages(kv_pages, k, v, slots)
    ref = cpu_update_kv_pages(kv_pages, k, v, slots)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    assert not np.array_equal(np.asarray(out), np.asarray(kv_pages))


def naive_attention(args, *, sm_scale, sliding_window=None, logits_soft_cap=None):
    """One query at a time, one key at a time, float64: slow and obviously right."""
    q, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs = (
        np.asarray(a, np.float64) if i < 2 else np.asarray(a) for i, a in enumerate(args)
    )
    _, _, hkv, ps, _ = kv_pages.shape
    group = q.shape[1] // hkv
    out = np.zeros_like(q)
    for s in range(num_seqs[0]):
        q_len, kv_len = cu_q_lens[s + 1] - cu_q_lens[s], kv_lens[s]
        for i in range(q_len):
            t, pos = cu_q_lens[s] + i, kv_len - q_len + i
            for h in range(q.shape[1]):
                logits, values = [], []
                for j in range(pos + 1):
                    if sliding_window is not None and j <= pos - sliding_window:
                        continue
                    k, v = kv_pages[page_table[s, j // ps], :, h // group, j % ps]
                    x = q[t, h] @ k * sm_scale
                    if logits_soft_cap is not None:
                        x = logits_soft_cap * np.tanh(x / logits_soft_cap)
                    logits.append(x)
                    values.append(v)
                w = np.exp(np.array(logits) - max(logits))
                out[t, h] = (w / w.sum()) @ np.array(values)
    return out


@pytest.mark.parametrize(
    "window_cap", [(None, None), (5, 3.0)], ids=["plain", "window-softcap"]
)
@pytest.mark.parametrize(
    "lens", [([1, 0, 6, 3], [9, 4, 6, 20]), ([1, 1, 0, 1], [9, 33, 4, 1]), ([40], [50])],
    ids=["mixed", "decode-only", "long-prefill"],
)
@pytest.mark.parametrize("max_dense_tokens", [512, 0], ids=["dense-in-step", "all-pages"])
def test_reference_matches_naive_loop(window_cap, lens, max_dense_tokens):
    sliding_window, logits_soft_cap = window_cap
    cfg = Config(jnp.float32, 6, 2, 16)
    args, num_real = make_inputs(cfg, *lens, seed=14)
    kw = {"sm_scale": 0.3, "sliding_window": sliding_window, "logits_soft_cap": logits_soft_cap}
    ref = np.asarray(cpu_ragged_paged_attention(*args, **kw, max_dense_tokens=max_dense_tokens))
    expected = naive_attention(args, **kw)
    assert rel_err(ref[:num_real], expected[:num_real]) < 1e-5
    assert (ref[num_real:] == 0).all()


@pytest.mark.parametrize(
    "lens", [([1, 0, 6, 3], [9, 4, 6, 20]), ([12, 1], [60, 50]), ([5, 7, 9, 1], [30, 40, 9, 50]),
             ([40], [64])],
    ids=["mixed", "chunk-and-decode", "three-chunks", "long-prior"],
)
@pytest.mark.parametrize("key_block", [16, 32, 256])
def test_reference_prior_keys_per_chunk_match_naive_loop(lens, key_block):
    """Earlier keys gathered once per prefill chunk, ``key_block`` at a time (several chunks in
    one step, single-query rows beside them, priors crossing key blocks), give the naive answer,
    with a window and a soft cap too, and padding rows stay exactly 0."""
    cfg = Config(jnp.float32, 6, 2, 16)
    args, num_real = make_inputs(cfg, *lens, seed=15)
    for window, cap in [(None, None), (7, 3.0)]:
        kw = {"sm_scale": 0.3, "sliding_window": window, "logits_soft_cap": cap}
        ref = np.asarray(cpu_ragged_paged_attention(*args, **kw, key_block=key_block))
        assert rel_err(ref[:num_real], naive_attention(args, **kw)[:num_real]) < 1e-5
        assert (ref[num_real:] == 0).all()


def test_select_backends():
    assert resolve_backend("auto", "gpu") == "pallas"
    assert resolve_backend("auto", "cpu") == "reference"  # measured, see docs/kernels.md
    assert get_attention_fns("pallas") == (ragged_paged_attention, update_kv_pages)
    assert get_attention_fns("reference") == (cpu_ragged_paged_attention, cpu_update_kv_pages)
    with pytest.raises(ValueError, match="triton"):
        resolve_backend("triton")


def test_reference_decode_with_fewer_tokens_than_rows():
    """Decode walks sequence rows when S <= T and token rows otherwise: both give the naive answer."""
    cfg = Config(jnp.float32, 6, 2, 16)
    args, num_real = make_inputs(cfg, [1, 1, 0, 1], [9, 33, 4, 1], seed=3)
    short = (args[0][:4],) + args[1:]  # 4 token rows < 6 sequence rows
    for call_args in (args, short):
        ref = np.asarray(cpu_ragged_paged_attention(*call_args, sm_scale=0.3))
        expected = naive_attention(call_args, sm_scale=0.3)
        assert rel_err(ref[:num_real], expected[:num_real]) < 1e-5
        assert (ref[num_real:] == 0).all()


@pytest.mark.parametrize("rows_per_walk", [1, 4, 64])
def test_reference_rows_walk_the_pages_a_few_at_a_time(monkeypatch, request, rows_per_walk):
    """Decode rows and single-query rows beside a chunk walk the pages ROWS_PER_WALK at a time,
    each walk to its own furthest key; a row count that is not a multiple, walks that stop at
    different pages, and padding rows with garbage page tables all give the naive answer."""
    from jaxserve.kernels.ragged_paged_attention import tuned

    monkeypatch.setattr(tuned, "ROWS_PER_WALK", rows_per_walk)
    # the reference is jitted: drop traces made with another ROWS_PER_WALK, and ours after
    cpu_ragged_paged_attention.clear_cache()
    request.addfinalizer(cpu_ragged_paged_attention.clear_cache)
    cfg = Config(jnp.float32, 6, 2, 16)
    for lens in (([1, 1, 1, 0, 1, 1], [9, 60, 2, 4, 33, 1]), ([1, 5, 1, 1, 1], [40, 9, 3, 64, 17])):
        args, num_real = make_inputs(cfg, *lens, seed=21)
        for max_dense_tokens in (512, 0):
            ref = np.asarray(cpu_ragged_paged_attention(*args, sm_scale=0.3,
                                                        max_dense_tokens=max_dense_tokens))
            assert rel_err(ref[:num_real], naive_attention(args, sm_scale=0.3)[:num_real]) < 1e-5
            assert (ref[num_real:] == 0).all()


@pytest.mark.parametrize("lens", [([1, 1, 1], [9, 33, 20]), ([3, 1], [10, 20])],
                         ids=["decodes", "chunk-and-decode"])
def test_reference_in_a_bucket_with_fewer_tokens_than_sequence_rows(lens):
    """A bucket may pad to fewer tokens than sequence rows (T < S), and a step this small holds
    the decode walk in each branch (WALK_IN_BRANCHES_UP_TO): decodes still walk their sequence
    rows, a chunk beside them takes the dense path, and both give the naive answer."""
    cfg = Config(jnp.float32, 6, 2, 16)
    args, num_real = make_inputs(cfg, *lens, seed=16)
    q = args[0][:4]  # 4 token rows against S_PAD = 6 sequence rows
    args = (q, *args[1:])
    kw = {"sm_scale": 0.3, "sliding_window": None, "logits_soft_cap": None}
    ref = np.asarray(cpu_ragged_paged_attention(*args, **kw))
    assert ref.shape == q.shape
    expected = naive_attention(args, **kw)
    assert rel_err(ref[:num_real], expected[:num_real]) < 1e-5
    assert (ref[num_real:] == 0).all()


@pytest.mark.parametrize("row_block", [3, 5, 8, 16])  # 5: windows of 4, which tile T_PAD = 48
def test_reference_row_blocks_match_naive_loop(monkeypatch, request, row_block):
    """Chunks score their earlier keys ROW_BLOCK token rows at a time (a window whose start is
    clamped to fit the step, so it may reach back over rows already done), and the dense in-step
    product gives each block of ROW_BLOCK rows only the keys up to its last row. Chunks spanning
    several windows, a chunk that ends the step, windows straddling two chunks, decodes between
    them, a sliding window and a soft cap all give the naive answer."""
    from jaxserve.kernels.ragged_paged_attention import tuned

    monkeypatch.setattr(tuned, "ROW_BLOCK", row_block)
    cpu_ragged_paged_attention.clear_cache()
    request.addfinalizer(cpu_ragged_paged_attention.clear_cache)
    cfg = Config(jnp.float32, 6, 2, 16)
    for lens in (([7, 1, 10, 3, 2], [40, 30, 60, 3, 50]),  # the last chunk ends at row 23
                 ([13, 1, 9], [13, 9, 41]),
                 ([20, 1, 25], [20, 30, 60])):  # the last chunk's windows clamp at T_PAD = 48
        args, num_real = make_inputs(cfg, *lens, seed=23)
        for window, cap in [(None, None), (7, 3.0)]:
            kw = {"sm_scale": 0.3, "sliding_window": window, "logits_soft_cap": cap}
            ref = np.asarray(cpu_ragged_paged_attention(*args, **kw, key_block=16))
            assert rel_err(ref[:num_real], naive_attention(args, **kw)[:num_real]) < 1e-5
            assert (ref[num_real:] == 0).all()


@pytest.mark.parametrize("kv_len", [1, 256, 300], ids=["first-key", "one-walk", "two-walks"])
@pytest.mark.parametrize("pages_per_iter", [None, 8], ids=["lone-default", "eight"])
def test_one_token_step_walks_its_pages_like_the_naive_loop(kv_len, pages_per_iter):
    """A one-token step (the lone-decode bucket) walks LONE_DECODE_PAGES_PER_ITER pages per loop
    iteration by default: its answer is the naive one whether the keys end inside the first
    walk, on its last slot or in a second one, with NaN in every slot it must not read and a
    page-table row that is not a multiple of the walk's width."""
    rng, ps, hkv, d, pages_per_row, num_pages = np.random.default_rng(21), 16, 2, 16, 24, 40
    page_table = np.full((1, pages_per_row), 10**6, np.int32)  # garbage past the used pages
    used = -(-kv_len // ps)
    page_table[0, :used] = rng.permutation(num_pages)[:used]
    kv_pages = np.full((num_pages, 2, hkv, ps, d), np.nan)
    for j in range(kv_len):
        kv_pages[page_table[0, j // ps], :, :, j % ps] = rng.standard_normal((2, hkv, d))
    args = (jnp.asarray(rng.standard_normal((1, 6, d)), jnp.float32),
            jnp.asarray(kv_pages, jnp.float32), jnp.asarray([kv_len], jnp.int32),
            jnp.asarray(page_table), jnp.asarray([0, 1], jnp.int32), jnp.asarray([1], jnp.int32))
    for window, cap in [(None, None), (37, 3.0)]:
        kw = {"sm_scale": 0.3, "sliding_window": window, "logits_soft_cap": cap}
        out = np.asarray(cpu_ragged_paged_attention(*args, **kw, pages_per_iter=pages_per_iter))
        assert rel_err(out, naive_attention(args, **kw)) < 1e-5


@pytest.mark.parametrize("lens", [
    ([0, 0, 0, 0, 0, 1, 1], [4, 9, 1, 3, 7, 40, 17]),  # the decodes sit past row T - 1
    ([0, 1, 2, 0, 1, 1, 1], [5, 33, 6, 2, 16, 1, 50]),  # decodes around a chunk and empty rows
], ids=["decodes-last", "interleaved"])
def test_single_query_rows_past_the_token_count_still_walk(lens):
    """A step with fewer tokens than sequence rows (the engine's buckets never have one, but the
    reference takes any): single-query rows past row T - 1, among rows without queries, a chunk
    and a padding row, still get the naive answer."""
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
    args = (jnp.asarray(rng.standard_normal((t, 6, d)), jnp.float32),
            jnp.asarray(kv_pages, jnp.float32), jnp.asarray(kv_lens + [0], jnp.int32),
            jnp.asarray(page_table), jnp.asarray(cu), jnp.asarray([len(q_lens)], jnp.int32))
    kw = {"sm_scale": 0.3}
    out = np.asarray(cpu_ragged_paged_attention(*args, **kw))
    assert rel_err(out, naive_attention(args, **kw)) < 1e-5
