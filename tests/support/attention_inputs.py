"""Random ragged paged attention inputs, the cases the backends are held to, and the check.

Every case uses the same padded shapes per config (T_PAD tokens, S_PAD sequence rows, P pages
per row), the way the engine buckets its steps, so each config compiles once. Inputs are fresh
random numbers; everything that is padding (rows past num_seqs, tokens past the last real one,
page_table entries a sequence does not use, cache slots that hold no live key) is garbage, NaN
where it can be.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve.kernels.ragged_paged_attention import oracle

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
    block_q: int | None = None  # the Pallas kernel's; None: its default
    pages_per_block: int | None = None  # the Pallas kernel's; None: its default

    @property
    def tol(self) -> float:
        return 1e-5 if self.dtype == jnp.float32 else 1e-2


# GQA ratios 1, 3 and 8, head dims 64 and 128, both dtypes; small block_q / pages_per_block in
# some configs so a prefill spans several kernel work items and a sequence several loop steps
CONFIGS = {
    "f32-gqa1-d64": Config(jnp.float32, 2, 2, 64, block_q=16, pages_per_block=1),
    "f32-gqa3-d128": Config(jnp.float32, 6, 2, 128, block_q=4, pages_per_block=2),
    "bf16-gqa8-d64": Config(jnp.bfloat16, 8, 1, 64, block_q=2),
    "bf16-gqa3-d128": Config(jnp.bfloat16, 6, 2, 128),
}
configs = pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))

# the steps every backend is held to: (q_lens, kv_lens) per real sequence, and a seed
CASES = {
    "decode_only": ([1, 1, 1, 1], [5, 17, 33, 1], 1),
    "prefill_only": ([7, 16, 20], [7, 16, 20], 2),
    "mixed": ([1, 9, 1, 4], [20, 9, 40, 30], 3),
    # the second chunk of two prompts: queries start mid-sequence and mid-page
    "chunked_prefill": ([8, 13], [24, 37], 4),
    # last key on the last slot of a page, on the first slot of the next, one past
    "page_boundaries": ([1, 2, 3, 16], [16, 17, 33, 32], 5),
    "single_token": ([1], [1], 6),
    "every_page_of_the_table": ([1, 5], [P * 16, P * 16], 7),  # page_size 16, as in CONFIGS
    # the middle sequence has keys but no queries this step: it must contribute nothing
    "zero_q_len_sequence": ([3, 0, 2, 0], [3, 10, 6, 4], 8),
}
cases = pytest.mark.parametrize("case", list(CASES), ids=list(CASES))


def verification_lens(q: int, page_size: int = 16) -> tuple[list[int], list[int]]:
    """A speculative-decoding step: (q_lens, kv_lens) of two decodes, a prefill chunk and three
    verification rows of q queries each (the last known token and q - 1 draft tokens, the last q
    positions of the row). Their keys end r past a page's end: r = 1 (the last query alone on
    the next page), r = q - 1 (the first query alone on the page before) and r = 0 (all on one
    page, the last query on its last slot)."""
    ps = page_size
    q_lens = [1, q, 1, q, 10, q]
    kv_lens = [ps + 1, ps + 1, 2 * ps + 1, 2 * ps + q - 1, 30, 3 * ps]  # the chunk starts mid-page
    return q_lens, kv_lens


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
        jnp.asarray(q, cfg.dtype),  # [T_PAD, Hq, D]
        jnp.asarray(kv_pages, cfg.dtype),  # [NUM_PAGES, 2, Hkv, page_size, D]
        jnp.asarray(kv),  # i32[S_PAD]
        jnp.asarray(page_table),  # i32[S_PAD, P]
        jnp.asarray(cu_q_lens),  # i32[S_PAD + 1]
        jnp.asarray([n], jnp.int32),  # i32[1]
    )
    return args, num_real


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def check_padding_is_ignored(cfg: Config, run) -> None:
    """run(args) -> a backend's output: NaN or random garbage in the padding gives the same real
    rows, and zeros past them."""
    q_lens, kv_lens, _ = CASES["mixed"]
    a, num_real = make_inputs(cfg, q_lens, kv_lens, seed=9, garbage="nan")
    b, _ = make_inputs(cfg, q_lens, kv_lens, seed=9, garbage="random")
    assert not np.array_equal(np.asarray(a[2]), np.asarray(b[2]))  # the padding does differ
    out_a, out_b = np.asarray(run(a)), np.asarray(run(b))
    np.testing.assert_array_equal(out_a[:num_real], out_b[:num_real])
    assert (out_a[num_real:] == 0).all() and (out_b[num_real:] == 0).all()


def check_against_oracle(out, args, num_real: int, tol: float, **kw) -> None:
    """A backend's output for ``args``: finite, zero past the real tokens, the oracle's answer."""
    out = np.asarray(out, np.float32)  # [T, Hq, D]
    assert np.isfinite(out).all(), "a row was never written (NaN poison) or NaN garbage leaked"
    assert (out[num_real:] == 0).all(), "padding tokens must come out as zeros"
    expected = oracle.ragged_paged_attention(*args, **kw)
    assert rel_err(out[:num_real], expected[:num_real]) < tol


def check_kv_write(write, dtype) -> None:
    """write(kv_pages, k, v, slots) -> the cache with the step's K/V in their slots: the
    oracle's, bit for bit, padding tokens (slot -1) and the cache's very last slot included."""
    rng = np.random.default_rng(13)
    num_pages, hkv, ps, d, t = 6, 2, 16, 64, 21  # 21 tokens: a kernel's last program is partial
    kv_pages = jnp.asarray(rng.standard_normal((num_pages, 2, hkv, ps, d)), dtype)
    k = jnp.asarray(rng.standard_normal((t, hkv, d)), dtype)
    v = jnp.asarray(rng.standard_normal((t, hkv, d)), dtype)
    slots = rng.permutation(num_pages * ps)[:t].astype(np.int32)
    slots[[3, 7, 20]] = -1  # padding tokens
    slots[5] = num_pages * ps - 1  # the very last slot of the cache
    slots = jnp.asarray(slots)
    out = write(kv_pages, k, v, slots)
    np.testing.assert_array_equal(np.asarray(out), oracle.update_kv_pages(kv_pages, k, v, slots))
    assert not np.array_equal(np.asarray(out), np.asarray(kv_pages))
