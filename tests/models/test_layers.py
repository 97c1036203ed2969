"""Mixed-precision layers: weights stored in bfloat16, activations in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxserve.models.layers import Embed, Linear, mixed_dot


def bf16_reference(x, w):  # what the mixed dot computes, in float64 on the host
    xr = np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    return xr @ np.asarray(w.astype(jnp.float32), np.float64)


def test_same_dtype_is_a_plain_dot():
    x = jax.random.normal(jax.random.key(0), (3, 8))  # f32[T, in]
    w = jax.random.normal(jax.random.key(1), (8, 5))  # f32[in, out]
    np.testing.assert_array_equal(mixed_dot(x, w, "ti,io->to"), x @ w)


@pytest.mark.parametrize("rows", [1, 2, 7])  # 1: the padded matrix-vector case
def test_bfloat16_weights_accumulate_in_float32(rows):
    x = jax.random.normal(jax.random.key(0), (rows, 64))  # f32[T, in]
    w = jax.random.normal(jax.random.key(1), (64, 48)).astype(jnp.bfloat16)  # bf16[in, out]
    out = mixed_dot(x, w, "ti,io->to")
    assert out.shape == (rows, 48) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, bf16_reference(x, w), rtol=1e-5, atol=1e-5)


def test_linear_and_tied_head_keep_bfloat16_weights_and_float32_outputs():
    rngs = nnx.Rngs(0)
    lin = Linear(16, 8, use_bias=True, dtype=jnp.float32, weight_dtype=jnp.bfloat16, rngs=rngs)
    emb = Embed(40, 16, dtype=jnp.float32, weight_dtype=jnp.bfloat16, rngs=rngs)
    assert lin.kernel[...].dtype == jnp.bfloat16 and lin.bias[...].dtype == jnp.float32
    x = emb(jnp.array([3, 0, 39]))  # f32[3, 16]
    assert x.dtype == jnp.float32
    np.testing.assert_array_equal(x, emb.embedding[...][jnp.array([3, 0, 39])].astype(jnp.float32))
    y = lin(x)  # f32[3, 8]
    np.testing.assert_allclose(y, bf16_reference(x, lin.kernel[...]) + np.asarray(lin.bias[...]),
                               rtol=1e-5, atol=1e-5)
    logits = emb.attend(x[:1])  # f32[1, 40]: the padded single-row case again
    np.testing.assert_allclose(logits, bf16_reference(x[:1], emb.embedding[...].T),
                               rtol=1e-5, atol=1e-5)


def test_float32_weights_under_bfloat16_activations_also_work():
    emb = Embed(40, 16, dtype=jnp.bfloat16, weight_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = emb(jnp.array([1, 2]))  # bf16[2, 16]
    assert x.dtype == jnp.bfloat16
    np.testing.assert_array_equal(x, emb.embedding[...][jnp.array([1, 2])].astype(jnp.bfloat16))
    assert emb.attend(x).dtype == jnp.bfloat16


def test_engine_serves_with_bfloat16_weights(tiny_model_dir):
    from jaxserve.llm import LLM
    from jaxserve.sampling_params import SamplingParams
    from tests.support.configs import TINY_CONFIG

    llm = LLM(TINY_CONFIG, progress=False, **{"model.weight_dtype": "bfloat16",
                                              "scheduler.token_buckets": [64]})
    state = llm.engine.runner.state
    kernels = [v for path, v in nnx.to_flat_state(state) if path[-1] == "kernel"]
    assert kernels and all(k[...].dtype == jnp.bfloat16 for k in kernels)
    # cache.dtype auto follows the weights: bfloat16, kept as uint16 bits on CPU
    assert all(c.dtype in (jnp.uint16, jnp.bfloat16) for c in llm.engine.runner.kv_caches)
    out = llm.generate(["hello there"], SamplingParams(temperature=0, max_tokens=5))[0]
    assert len(out.outputs[0].token_ids) == 5
