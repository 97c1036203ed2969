"""Tensor parallelism over a device mesh: how each weight, the K/V cache and attention are split.

One mesh axis, ``tp``, over the engine's devices; GSPMD does the communication. Weights are split
Megatron-style, so each decoder layer needs one all-reduce after attention and one after the MLP:

- q/k/v and gate/up projections by output (heads, intermediate), ``[in, out] -> P(None, tp)``;
- o and down projections by input, ``[in, out] -> P(tp, None)`` (the all-reduce of their sums);
- the embedding, the LM head and the norms replicated: the LM head's output is then the full
  logits row on every device, so the sampler needs no gather and draws the same token whatever
  the rank count.

The K/V cache ``[num_pages, 2, Hkv, page_size, D]`` is split over its KV heads. With fewer KV
heads than ranks each KV head is repeated until there is one per rank (``HeadPlan``), so every
rank holds the heads its query heads read. Attention runs under ``shard_map`` over each rank's
local heads, with the backend's own signature.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxserve.config import ConfigError
from jaxserve.models.attention_metadata import AttentionBackend
from jaxserve.models.llama_config import LlamaConfig

AXIS = "tp"
# the last two NNX path keys of a projection's weight -> the axis its [in, out] kernel splits
_SPLIT_OUT = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
_SPLIT_IN = {"o_proj", "down_proj"}


@dataclasses.dataclass(frozen=True)
class HeadPlan:
    """How a model's heads fall on ``tp`` ranks; ``kv_repeats`` copies of each KV head."""

    tp: int
    num_kv_heads: int  # in the served model: the checkpoint's times kv_repeats
    kv_repeats: int

    @classmethod
    def for_model(cls, cfg: LlamaConfig, tp: int) -> HeadPlan:
        hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        if hq % tp:
            raise ConfigError(f"parallel.tensor_parallel_size: {tp} must divide the model's "
                              f"{hq} attention heads")
        if cfg.intermediate_size % tp:
            raise ConfigError(f"parallel.tensor_parallel_size: {tp} must divide the model's "
                              f"intermediate size {cfg.intermediate_size}")
        if hkv % tp == 0:
            return cls(tp, hkv, 1)
        if tp % hkv:
            raise ConfigError(f"parallel.tensor_parallel_size: {tp} must divide the model's "
                              f"{hkv} KV heads, or be a multiple of them")
        return cls(tp, tp, tp // hkv)

    def served_config(self, cfg: LlamaConfig) -> LlamaConfig:
        """The config of the model as served: its KV heads repeated when there are too few."""
        import msgspec

        return msgspec.structs.replace(cfg, num_key_value_heads=self.num_kv_heads)


def make_mesh(tp: int) -> Mesh:
    """A one-axis mesh over the first ``tp`` devices."""
    devices = jax.devices()
    if tp > len(devices):
        raise ConfigError(f"parallel.tensor_parallel_size: {tp} exceeds the {len(devices)} "
                          f"{jax.default_backend()} devices this process sees")
    if jax.process_count() > 1 and tp != len(devices):
        raise ConfigError(f"parallel.tensor_parallel_size: {tp} must be all {len(devices)} "
                          f"devices of the {jax.process_count()} processes")
    return Mesh(np.array(devices[:tp]), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def kv_cache_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(None, None, AXIS))  # [num_pages, 2, Hkv, page_size, D]


def param_spec(path: tuple, ndim: int) -> P:
    """The PartitionSpec of one parameter, from its NNX path."""
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    keys = [k for k in keys if k != "value"]
    owner, leaf = (keys[-2], keys[-1]) if len(keys) >= 2 else ("", keys[-1])
    if owner in _SPLIT_OUT:
        return P(None, AXIS) if leaf == "kernel" else P(AXIS)  # kernel [in, out], bias [out]
    if owner in _SPLIT_IN and leaf == "kernel":
        return P(AXIS, None)
    return P(*([None] * ndim))


def shard_abstract_state(state, mesh: Mesh):
    """An abstract model state whose leaves carry their shardings: programs lowered from it take
    sharded weights, and the loader places each weight's shards where they belong."""

    def annotate(path, leaf):
        sharding = NamedSharding(mesh, param_spec(path, len(leaf.shape)))
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    return jax.tree_util.tree_map_with_path(annotate, state)


def shard_abstract_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, shard_abstract_state(state, mesh))


def shard_backend(backend: AttentionBackend, mesh: Mesh) -> AttentionBackend:
    """The backend's two functions under shard_map over the local heads, same signatures."""
    heads = P(None, AXIS, None)  # q, k, v: [T, H, D]
    cache = P(None, None, AXIS)  # [num_pages, 2, Hkv, page_size, D]

    def attention(q, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs, **kwargs):
        local = functools.partial(backend.attention, **kwargs)
        return jax.shard_map(local, mesh=mesh, in_specs=(heads, cache, P(), P(), P(), P()),
                             out_specs=heads, check_vma=False)(
            q, kv_pages, kv_lens, page_table, cu_q_lens, num_seqs)

    def update_kv(kv_pages, k, v, slot_mapping):
        return jax.shard_map(backend.update_kv, mesh=mesh,
                             in_specs=(cache, heads, heads, P()), out_specs=cache,
                             check_vma=False)(kv_pages, k, v, slot_mapping)

    attention.__qualname__ = f"tp{mesh.size}({backend.name}).attention"
    update_kv.__qualname__ = f"tp{mesh.size}({backend.name}).update_kv"
    return dataclasses.replace(backend, attention=attention, update_kv=update_kv)


@dataclasses.dataclass(frozen=True)
class ShardedModel:
    """An abstract model laid out for ``tp`` ranks (``tp == 1``: one device, no mesh)."""

    model: nnx.Module  # abstract: ShapeDtypeStruct leaves, carrying their shardings
    mesh: Mesh | None
    heads: HeadPlan


def abstract_sharded_model(folder, backend: AttentionBackend, cfg: LlamaConfig, tp: int,
                           dtype: str, weight_dtype: str | None) -> ShardedModel:
    """The model's shapes split over a ``tp``-device mesh, its attention under shard_map."""
    from jaxserve.models.loader import abstract_model

    heads = HeadPlan.for_model(cfg, tp)
    if tp == 1:
        return ShardedModel(abstract_model(folder, backend, dtype, weight_dtype), None, heads)
    mesh = make_mesh(tp)
    model = abstract_model(folder, shard_backend(backend, mesh), dtype, weight_dtype,
                           cfg=heads.served_config(cfg))
    return ShardedModel(shard_abstract_model(model, mesh), mesh, heads)
