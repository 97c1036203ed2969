"""A runner lowered from the model's shapes before its weights exist (builder.py lowers every
bucket while the weights load) must run exactly as one built on the loaded model."""

import shutil

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxserve.models.loader import abstract_model, is_abstract, load_model, load_weights
from jaxserve.runner.attention import make_attention_backend
from tests.support.tiny_step import tiny_batch, tiny_runner


@pytest.mark.parametrize("layers_per_call", [None, 1])
def test_abstract_runner_with_weights_attached_later_matches(tiny_model_dir, layers_per_call):
    backend = make_attention_backend("reference")
    loaded = tiny_runner(load_model(tiny_model_dir, backend), layers_per_call)
    abstract = abstract_model(tiny_model_dir, backend)
    assert is_abstract(nnx.state(abstract))
    late = tiny_runner(abstract, layers_per_call)
    assert late.kv_caches is None  # no K/V cache before the weights
    inputs = tiny_batch(abstract.cfg)
    late.warmup([inputs], progress=False, weights=lambda: load_weights(tiny_model_dir, abstract))
    assert late.kv_caches is not None and not is_abstract(late.state)
    for runner in (loaded, late):
        runner._warm = True
    ours, ref = late.execute(inputs), loaded.execute(inputs)
    np.testing.assert_array_equal(ours.tokens, ref.tokens)
    np.testing.assert_allclose(ours.logprobs, ref.logprobs, rtol=1e-6, atol=1e-6)
    assert late.compilations_after_warmup == 0


def test_bfloat16_checkpoint_loads_through_numpy(tiny_model_dir, tmp_path):
    """A checkpoint stored in bfloat16 (most Hugging Face uploads) loads, as float32 or bfloat16
    parameters, with the checkpoint's values."""
    folder = tmp_path / "bf16"
    shutil.copytree(tiny_model_dir, folder)
    for file in folder.glob("*.safetensors"):
        tensors = load_file(file)
        save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}, file)
    backend = make_attention_backend("reference")
    f32 = load_model(folder, backend, "float32")
    bf16 = load_model(folder, backend, "float32", "bfloat16")
    q32 = f32.layers[0].self_attn.q_proj.kernel[...]
    q16 = bf16.layers[0].self_attn.q_proj.kernel[...]
    assert q32.dtype == jnp.float32 and q16.dtype == jnp.bfloat16
    stored = load_file(next(folder.glob("*.safetensors")))["model.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(np.asarray(q16), stored.T)  # [in, out] from torch's [out, in]
    np.testing.assert_array_equal(np.asarray(q32), stored.T.astype(np.float32))
