"""The Pallas kernels, in interpret mode on CPU, against the oracle on fresh random inputs.

Interpret mode fills a pallas_call's output with NaN before the kernel runs, so a row the kernel
forgets to write shows up as NaN (``test_interpret_mode_poisons_output`` keeps that assumption
honest). Inputs and cases: ``tests/support/attention_inputs.py``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from jaxserve.kernels.ragged_paged_attention import ragged_paged_attention, update_kv_pages
from tests.support import attention_inputs as shared
from tests.support.attention_inputs import Config, configs, make_inputs


def run_kernel(cfg: Config, args, **kw):
    return ragged_paged_attention(
        *args,
        sm_scale=cfg.head_dim**-0.5,
        block_q=cfg.block_q,
        pages_per_block=cfg.pages_per_block,
        **kw,
    )


def check(cfg: Config, q_lens, kv_lens, seed: int, **kw):
    args, num_real = make_inputs(cfg, q_lens, kv_lens, seed=seed)
    shared.check_against_oracle(run_kernel(cfg, args, **kw), args, num_real, cfg.tol,
                         sm_scale=cfg.head_dim**-0.5, **kw)


@configs
@shared.cases
def test_against_the_oracle(cfg, case):  # decode_only, prefill_only, mixed, chunked_prefill, ...
    check(cfg, *shared.CASES[case])


@configs
@pytest.mark.parametrize("q", range(2, 10))
def test_verification_rows_across_page_boundaries(cfg, q):
    """Speculative decoding's verification rows of q queries beside decodes and a chunk, their
    queries straddling a page boundary, give the oracle's answer."""
    check(cfg, *shared.verification_lens(q), seed=30 + q)


@configs
def test_padding_does_not_change_real_rows(cfg):
    shared.check_padding_is_ignored(cfg, lambda args: run_kernel(cfg, args))


def test_default_block_sizes():
    cfg = Config(jnp.float32, 4, 2, 64)  # block_q=32, pages_per_block=4
    check(cfg, [1, 30, 0, 12], [50, 30, 7, 12], seed=10)


@pytest.mark.parametrize("page_size", [8, 32])
def test_other_page_sizes(page_size):
    cfg = Config(jnp.float32, 6, 2, 64, page_size=page_size, block_q=8, pages_per_block=2)
    check(cfg, [1, 9, 1, 4], [20, 9, 31, 30], seed=11)  # <= 4 pages of 8


def test_sliding_window_and_soft_cap():
    cfg = Config(jnp.float32, 6, 2, 64, block_q=4, pages_per_block=1)
    check(cfg, [1, 12, 3], [40, 30, 20], seed=12, sliding_window=19, logits_soft_cap=5.0)


def test_interpret_mode_poisons_output():
    """The NaN checks above rely on interpret mode filling outputs with NaN."""

    def write_nothing(x_ref, o_ref):
        del x_ref, o_ref

    x = jnp.ones((16, 16), jnp.float32)
    out = pl.pallas_call(write_nothing, out_shape=x, interpret=True)(x)
    assert np.isnan(np.asarray(out)).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_update_kv_pages(dtype):
    shared.check_kv_write(update_kv_pages, dtype)
