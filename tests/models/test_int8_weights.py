"""int8 weights (W8A8, dynamic): per-channel int8 weights, activations quantized per row at run
time, int8 products summed in int32; held to a float64 host oracle of the same arithmetic."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxserve.checkpoints.tiny import write_tiny_model
from jaxserve.models.layers import Embed, Linear, quantize_per_channel, quantized_dot
from jaxserve.models.loader import load_model
from jaxserve.runner.attention import make_attention_backend
from jaxserve.scoring import prompt_logits


def oracle_dot(x, w, w_scale, spec):  # the same quantization, multiplied in float64 on the host
    x = np.asarray(x, np.float64)
    x_scale = np.abs(x).max(-1, keepdims=True).astype(np.float32) / np.float32(127)
    x_scale = np.where(x_scale == 0, 1.0, x_scale)
    xq = np.clip(np.round(x / x_scale), -127, 127)
    return np.einsum(spec, xq, np.asarray(w, np.float64)) * x_scale * np.asarray(w_scale)


def test_per_channel_quantization_bounds_each_weights_error_by_half_its_channels_step():
    w = np.random.default_rng(0).standard_normal((24, 10)).astype(np.float32)  # [in, out]
    w[:, 3] = 0  # a dead channel must not divide by zero
    q, scale = quantize_per_channel(w, axis=0)
    assert q.dtype == np.int8 and scale.shape == (10,) and scale.dtype == np.float32
    assert np.abs(q).max() == 127 and np.all(q[:, 3] == 0)
    assert np.all(np.abs(q * scale - w) <= scale / 2 + 1e-7)
    rows_q, rows_scale = quantize_per_channel(w.T, axis=1)  # [V, hidden]: a scale per row
    np.testing.assert_array_equal(rows_q, q.T)
    np.testing.assert_array_equal(rows_scale, scale)
    jq, jscale = quantize_per_channel(jnp.asarray(w), axis=0)  # on the device, the same but
    np.testing.assert_allclose(jscale, scale, rtol=1e-6)  # for XLA's rounding of the division
    assert np.abs(np.asarray(jq, np.int32) - q).max() <= 1


@pytest.mark.parametrize("rows", [1, 2, 7])  # 1: the padded one-row case on CPU
@pytest.mark.parametrize("spec", ["ti,io->to", "th,vh->tv"])
def test_quantized_dot_is_the_oracles_integer_product(rows, spec):
    x = jax.random.normal(jax.random.key(0), (rows, 64)) * 3  # f32[T, in]
    x = x.at[0, 5].set(40.0)  # an outlier sets its row's step
    w = jax.random.normal(jax.random.key(1), (64, 48))  # [in, out]
    w = w if spec == "ti,io->to" else w.T  # [out, in] for the tied head's layout
    q, scale = quantize_per_channel(w, axis=0 if spec == "ti,io->to" else 1)
    out = quantized_dot(x, q, scale, spec)
    assert out.shape == (rows, 48) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, oracle_dot(x, q, scale, spec), rtol=1e-5, atol=1e-4)
    zero = quantized_dot(jnp.zeros((rows, 64)), q, scale, spec)  # padding rows stay zero
    np.testing.assert_array_equal(zero, 0)


def test_int8_layers_store_int8_and_return_the_activations_dtype():
    rngs = nnx.Rngs(0)
    lin = Linear(16, 8, use_bias=True, dtype=jnp.float32, weight_dtype=jnp.int8, rngs=rngs)
    emb = Embed(40, 16, dtype=jnp.float32, weight_dtype=jnp.int8, rngs=rngs)
    assert lin.kernel[...].dtype == jnp.int8 and lin.kernel_scale[...].shape == (8,)
    assert emb.embedding[...].dtype == jnp.int8 and emb.embedding_scale[...].shape == (40,)
    ids = jnp.array([3, 0, 39])
    x = emb(ids)  # f32[3, 16]: the rows dequantized
    table = np.asarray(emb.embedding[...], np.float32) * np.asarray(emb.embedding_scale[...])[:, None]
    np.testing.assert_allclose(x, table[np.asarray(ids)], rtol=1e-6)
    y = lin(x)
    np.testing.assert_allclose(y, oracle_dot(x, lin.kernel[...], lin.kernel_scale[...], "ti,io->to")
                               + np.asarray(lin.bias[...]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(emb.attend(x[:1]), oracle_dot(x[:1], emb.embedding[...],
                                                             emb.embedding_scale[...], "th,vh->tv"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # tied head; biases and an untied head
def test_the_loader_quantizes_each_checkpoint_weight_per_output_channel(tmp_path, arch):
    write_tiny_model(tmp_path, arch)
    backend = make_attention_backend("reference")
    f32 = dict(nnx.to_flat_state(nnx.state(load_model(tmp_path, backend, "float32"))))
    i8 = dict(nnx.to_flat_state(nnx.state(load_model(tmp_path, backend, "float32", "int8"))))
    quantized = 0
    for path, value in f32.items():
        leaf, weight = path[-1], np.asarray(value[...])
        if leaf in ("kernel", "embedding"):
            q, scale = quantize_per_channel(weight, axis=0 if leaf == "kernel" else 1)
            np.testing.assert_array_equal(i8[path][...], q)
            np.testing.assert_array_equal(i8[(*path[:-1], f"{leaf}_scale")][...], scale)
            quantized += 1
        else:  # norms and biases stay in the activations' dtype
            np.testing.assert_array_equal(i8[path][...], weight)
    assert quantized == 1 + 7 * 2 + (arch == "qwen2")  # embedding, 7 per layer, untied head


def test_int8_logits_stay_near_float32s(tmp_path):
    write_tiny_model(tmp_path, "llama")
    backend = make_attention_backend("reference")
    ids = list(range(3, 40))
    ref = prompt_logits(load_model(tmp_path, backend, "float32"), ids)  # f32[T, V]
    got = prompt_logits(load_model(tmp_path, backend, "float32", "int8"), ids)
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.9


def test_engine_serves_with_int8_weights_and_a_float_cache(tiny_model_dir):
    from jaxserve.llm import LLM
    from jaxserve.sampling_params import SamplingParams
    from tests.support.configs import TINY_CONFIG

    llm = LLM(TINY_CONFIG, progress=False, **{"model.weight_dtype": "int8",
                                              "scheduler.token_buckets": [64]})
    kernels = [v for path, v in nnx.to_flat_state(llm.engine.runner.state) if path[-1] == "kernel"]
    assert kernels and all(k[...].dtype == jnp.int8 for k in kernels)
    assert all(jnp.issubdtype(c.dtype, jnp.floating) or c.dtype == jnp.uint16
               for c in llm.engine.runner.kv_caches)
    out = llm.generate(["hello there", "abc " * 20], SamplingParams(temperature=0, max_tokens=6))
    assert [len(o.outputs[0].token_ids) for o in out] == [6, 6]
    assert llm.engine.runner.compilations_after_warmup == 0
