"""Build a Llama-family model from a Hugging Face safetensors folder, without torch.

The model is first built abstractly (``nnx.eval_shape`` with zero placeholders, ``rngs=None``:
shapes only; the builder lowers the step programs from it while the weights load), then each
parameter is filled from the checkpoint tensor whose Hugging Face name its NNX path maps to.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from jaxserve.models.attention_metadata import AttentionBackend
from jaxserve.models.layers import quantize_per_channel
from jaxserve.models.llama import LlamaForCausalLM
from jaxserve.models.llama_config import LlamaConfig


def _keys(path: tuple) -> list[str]:
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return [str(k) for k in keys if k != "value"]


def hf_name(path: tuple) -> tuple[str, bool]:
    """NNX parameter path -> (Hugging Face tensor name, whether to transpose it); an int8
    weight's scales (``kernel_scale``, ``embedding_scale``) come from the same tensor."""
    keys = _keys(path)
    leaf = keys[-1]
    if keys[0] == "embed_tokens":
        return "model.embed_tokens.weight", False
    if keys[0] == "lm_head":
        return "lm_head.weight", True
    prefix = "model." + ".".join(keys[:-1])
    if leaf in ("kernel", "kernel_scale"):  # Linear stores [in, out]; torch's stores [out, in]
        return prefix + ".weight", True
    if leaf == "scale":
        return prefix + ".weight", False
    return prefix + "." + leaf, False


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (sharded checkpoints included)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {folder}")
    where: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="numpy") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                where[name] = file
    return where


def _read_tensor(file: Path, name: str) -> np.ndarray:
    """One tensor as a host array (bfloat16 through ml_dtypes). The file is mapped for this read
    only, since a mapping kept open for the whole load keeps every page read resident.
    Converting and transposing on the host costs no XLA compilation per weight shape."""
    with safe_open(str(file), framework="numpy") as handle:
        return handle.get_tensor(name)


def abstract_model(
    folder: str | Path,
    backend: AttentionBackend,
    dtype: str = "float32",
    weight_dtype: str | None = None,
    cfg: LlamaConfig | None = None,
) -> LlamaForCausalLM:
    """The model with ShapeDtypeStruct leaves: enough to lower its programs before any weight is
    read. dtype: activations and K/V; weight_dtype: stored weights (None: the same as dtype);
    cfg: the served architecture when it differs from the folder's (KV heads repeated for
    tensor parallelism)."""
    cfg = cfg or LlamaConfig.from_hf(Path(folder))
    jdtype = jnp.dtype(dtype)
    wdtype = jnp.dtype(weight_dtype or dtype)
    return nnx.eval_shape(lambda: LlamaForCausalLM(cfg, backend, dtype=jdtype,
                                                   weight_dtype=wdtype, rngs=None))


def is_abstract(state) -> bool:
    """Whether a model state holds shapes (``abstract_model``) rather than arrays."""
    return any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(state))


def _aligned_empty(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
    """An uninitialized C-contiguous array at an ``align``-byte boundary: XLA:CPU adopts such a
    host buffer without copying it (numpy's own are 16-byte aligned, so each weight would be
    converted into one buffer and copied into another, whose freed remains glibc keeps)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + size].view(dtype).reshape(shape)


def repeat_kv_heads(array: np.ndarray, name: str, head_dim: int, repeats: int) -> np.ndarray:
    """A k/v projection's weight ([in, Hkv * D], transposed) or bias ([Hkv * D]) with each KV
    head repeated ``repeats`` times, in place: query head h still reads the copy of its head."""
    if repeats == 1 or not name.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias",
                                          "v_proj.bias")):
        return array
    heads = array.reshape(*array.shape[:-1], -1, head_dim)  # [..., Hkv, D]
    return np.repeat(heads, repeats, axis=-2).reshape(*array.shape[:-1], -1)


def _place(host: np.ndarray, spec: jax.ShapeDtypeStruct) -> jax.Array:
    """A host array on the device(s) its spec names: split into its shards when it carries a
    multi-device sharding, each device receiving only its own slice."""
    sharding = getattr(spec, "sharding", None)
    if sharding is None or len(sharding.device_set) == 1:
        return jax.device_put(host)  # on CPU an aligned array is taken as is, not copied
    return jax.make_array_from_callback(spec.shape, sharding, lambda index: host[index])


def load_weights(folder: str | Path, abstract: LlamaForCausalLM,
                 kv_repeats: int = 1) -> LlamaForCausalLM:
    """Fill every parameter of an abstract model from the folder's checkpoint tensors (each KV
    head repeated ``kv_repeats`` times); parameters whose spec carries a sharding are placed in
    their shards."""
    folder = Path(folder)
    graphdef, abstract_state = nnx.split(abstract)
    tensors = _tensor_files(folder)
    head_dim = abstract.cfg.head_dim
    # an int8 weight's (values, scales), from its first leaf filled until its second is
    pending: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def read(name: str, transpose: bool, path) -> np.ndarray:
        if name not in tensors:
            raise KeyError(f"{folder}: checkpoint has no tensor {name!r} (needed for {path})")
        array = _read_tensor(tensors[name], name)
        return repeat_kv_heads(array.T if transpose else array, name, head_dim, kv_repeats)

    def quantized(name: str, transpose: bool, path, want_scale: bool) -> np.ndarray:
        if name in pending:
            values, scale = pending.pop(name)
        else:  # a kernel [in, out] has a scale per column, an embedding [V, hidden] one per row
            values, scale = quantize_per_channel(read(name, transpose, path),
                                                 axis=0 if transpose else 1)
            pending[name] = (values, scale)
        return scale if want_scale else values

    def fill(path, spec: jax.ShapeDtypeStruct) -> jax.Array:
        name, transpose = hf_name(path)
        is_scale = _keys(path)[-1].endswith("_scale")
        if is_scale or spec.dtype == np.int8:
            array = quantized(name, transpose, path, want_scale=is_scale)
        else:
            array = read(name, transpose, path)
        if tuple(array.shape) != tuple(spec.shape):
            raise ValueError(f"{name}: checkpoint shape {array.shape}, model expects {spec.shape}")
        host = _aligned_empty(spec.shape, spec.dtype)
        np.copyto(host, array, casting="unsafe")  # converts and lays out in one pass
        return _place(host, spec)

    state = jax.tree_util.tree_map_with_path(fill, abstract_state)
    return nnx.merge(graphdef, state)


def load_model(
    folder: str | Path,
    backend: AttentionBackend,
    dtype: str = "float32",
    weight_dtype: str | None = None,
) -> LlamaForCausalLM:
    """dtype: activations and K/V; weight_dtype: stored weights (None: the same as dtype)."""
    return load_weights(folder, abstract_model(folder, backend, dtype, weight_dtype))
