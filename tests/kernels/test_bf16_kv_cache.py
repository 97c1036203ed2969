"""A bfloat16 K/V cache (``cache.dtype: bfloat16``): the CPU backend keeps it as uint16 bit
patterns, the Pallas kernel as bfloat16; both must attend like the oracle over the rounded keys,
and the engine must serve with it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve.kernels.ragged_paged_attention import (
    cpu_ragged_paged_attention,
    cpu_update_kv_pages,
    oracle,
    ragged_paged_attention,
)
from jaxserve.kernels.ragged_paged_attention.kv_storage import kv_storage_dtype
from tests.support.attention_inputs import Config, make_inputs, rel_err

CFG = Config(jnp.float32, 6, 2, 64)


def as_bits(pages: jax.Array) -> jax.Array:  # f32 pages -> their bfloat16 rounding, as uint16
    return jax.lax.bitcast_convert_type(pages.astype(jnp.bfloat16), jnp.uint16)


def rounded(args):  # the same inputs with the cache rounded to bfloat16, back in float32
    return (args[0], args[1].astype(jnp.bfloat16).astype(jnp.float32), *args[2:])


def test_storage_dtype():
    assert kv_storage_dtype(jnp.bfloat16) == jnp.uint16
    assert kv_storage_dtype("bfloat16") == jnp.uint16
    assert kv_storage_dtype(jnp.float32) == jnp.float32


@pytest.mark.parametrize(
    "lens", [([1, 0, 6, 3], [9, 4, 6, 20]), ([1, 1, 0, 1], [9, 33, 4, 1]), ([40], [50]),
             ([12, 1], [60, 50])],
    ids=["mixed", "decode-only", "long-prefill", "chunk-and-decode"],
)
@pytest.mark.parametrize("max_dense_tokens", [512, 0], ids=["dense-in-step", "all-pages"])
def test_cpu_backend_on_bf16_bits(lens, max_dense_tokens):
    """Queries in float32 against a cache of bfloat16 bits (NaN garbage in unused slots): the
    answer is the oracle's over the rounded keys, to the bfloat16 precision of the products'
    inputs, through the page walk and the dense prefill products alike."""
    args, num_real = make_inputs(CFG, *lens, seed=21)
    kw = {"sm_scale": CFG.head_dim**-0.5}
    bits = (args[0], as_bits(args[1]), *args[2:])
    out = np.asarray(cpu_ragged_paged_attention(*bits, **kw, max_dense_tokens=max_dense_tokens))
    expected = oracle.ragged_paged_attention(*bits, **kw)  # the oracle widens the bits
    assert np.isfinite(out).all() and (out[num_real:] == 0).all()
    assert rel_err(out[:num_real], expected[:num_real]) < 1e-2
    # and it is the float32 cache's answer over the rounded keys, to bfloat16 precision
    f32 = np.asarray(cpu_ragged_paged_attention(*rounded(args), **kw,
                                                max_dense_tokens=max_dense_tokens))
    assert rel_err(out[:num_real], f32[:num_real]) < 1e-2


def test_update_kv_pages_stores_rounded_bits():
    rng = np.random.default_rng(23)
    num_pages, hkv, ps, d, t = 4, 2, 8, 16, 11
    cache = jnp.zeros((num_pages, 2, hkv, ps, d), jnp.uint16)
    k = jnp.asarray(rng.standard_normal((t, hkv, d)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((t, hkv, d)), jnp.float32)
    slots = rng.permutation(num_pages * ps)[:t].astype(np.int32)
    slots[4] = -1  # a padding token writes nothing
    out = np.asarray(cpu_update_kv_pages(cache, k, v, jnp.asarray(slots)))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, oracle.update_kv_pages(cache, k, v, slots))
    widened = np.asarray(jax.lax.bitcast_convert_type(jnp.asarray(out), jnp.bfloat16), np.float32)
    for i, slot in enumerate(slots):
        if slot < 0:
            continue
        page, off = divmod(int(slot), ps)
        for which, x in enumerate((k, v)):
            want = np.asarray(x[i].astype(jnp.bfloat16), np.float32)
            np.testing.assert_array_equal(widened[page, which, :, off], want)
    assert np.count_nonzero(out) > 0 and (out.reshape(num_pages, 2, hkv, ps, d)
                                          .transpose(0, 3, 1, 2, 4).reshape(-1, 2 * hkv * d)
                                          .any(axis=1).sum() == t - 1)


def test_kernel_with_bf16_pages_under_f32_queries():
    """The Pallas kernel (interpret mode) takes a real bfloat16 cache under float32 queries,
    casting the queries for its products; the CPU backend takes the same cache as bits. Both
    give the oracle's answer over the rounded keys."""
    args, num_real = make_inputs(CFG, [1, 5, 1], [20, 9, 40], seed=24)
    kw = {"sm_scale": CFG.head_dim**-0.5}
    out = np.asarray(ragged_paged_attention(args[0], args[1].astype(jnp.bfloat16), *args[2:],
                                            **kw), np.float32)
    bits = (args[0], as_bits(args[1]), *args[2:])
    ref = np.asarray(cpu_ragged_paged_attention(*bits, **kw))
    expected = oracle.ragged_paged_attention(*bits, **kw)
    assert np.isfinite(out).all() and (out[num_real:] == 0).all()
    assert rel_err(out[:num_real], expected[:num_real]) < 1e-2
    assert rel_err(out[:num_real], ref[:num_real]) < 1e-2


def test_engine_serves_with_a_bf16_cache():
    """The tiny model's engine with cache.dtype bfloat16: a uint16 cache, the same greedy
    tokens as the float32 cache's for most requests, and log-probs close to them."""
    from jaxserve.llm import LLM
    from jaxserve.sampling_params import SamplingParams
    from tests.support.configs import TINY_CONFIG
    from tests.support.prompts import LONG as long_prompt
    from tests.support.prompts import prompts as make_prompts

    prompts = make_prompts(5)  # the engine tests' prompts, and one long enough to chunk
    one = {"scheduler.num_decode_steps": 1}
    f32 = LLM(TINY_CONFIG, progress=False, **one)
    bf16 = LLM(TINY_CONFIG, progress=False, **one, **{"cache.dtype": "bfloat16"})
    assert all(kv.dtype == jnp.uint16 for kv in bf16.engine.runner.kv_caches)
    assert all(kv.dtype == jnp.float32 for kv in f32.engine.runner.kv_caches)
    batch = prompts + [long_prompt]  # chunked prefill beside decodes
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=1)
    ours, ref = bf16.generate(batch, params), f32.generate(batch, params)
    same = 0
    for a, b in zip(ours, ref):
        a, b = a.outputs[0], b.outputs[0]
        # log-probs agree while the tokens do (after a flip the contexts differ)
        for ta, tb, la, lb in zip(a.token_ids, b.token_ids, a.logprobs, b.logprobs):
            assert abs(la.logprob - lb.logprob) < 0.05
            if ta != tb:
                break
        same += a.token_ids == b.token_ids
    assert same >= len(batch) - 1
    # forks copy their leader's last page and a repeated prompt reads cached pages: through the
    # uint16 cache both must give the lone greedy answer
    greedy = SamplingParams(temperature=0, max_tokens=8)
    alone = bf16.generate([long_prompt], greedy)[0].outputs[0].token_ids
    forked = bf16.generate([long_prompt], SamplingParams(n=3, temperature=0, max_tokens=8))[0]
    assert [c.token_ids for c in forked.outputs] == [alone] * 3
    again = bf16.generate([long_prompt], greedy)[0]
    assert again.num_cached_tokens > 0 and again.outputs[0].token_ids == alone
    bf16.engine.allocator.check_all_free()


def test_cli_kv_cache_dtype_flag_and_config():
    """--kv-cache-dtype (vLLM's flag) sets cache.dtype; auto follows the weights; anything else
    is a clean config error naming the field."""
    from jaxserve.cli import config_from_args, parser
    from jaxserve.config import ConfigError, load_config
    from tests.support.configs import TINY_CONFIG

    flags = ["generate", "--config", str(TINY_CONFIG), "--prompt", "hi"]
    config = config_from_args(parser().parse_args([*flags, "--kv-cache-dtype", "bfloat16"]))
    assert config.cache.dtype == "bfloat16" and config.cache.kv_dtype("float32") == "bfloat16"
    config = config_from_args(parser().parse_args(flags))
    assert config.cache.dtype == "auto" and config.cache.kv_dtype("float32") == "float32"
    with pytest.raises(SystemExit):
        parser().parse_args([*flags, "--kv-cache-dtype", "fp8"])
    with pytest.raises(ConfigError, match="cache.dtype"):
        load_config(TINY_CONFIG, {"cache.dtype": "int8"})
