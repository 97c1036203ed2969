"""What one forward step needs to find K/V in the paged cache: a pytree of device arrays."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMetadata:
    slot_mapping: jax.Array  # i32[T]: cache slot (page * page_size + offset) of each new token; -1 pads
    kv_lens: jax.Array  # i32[S]: keys of each sequence after this step's tokens are written
    page_table: jax.Array  # i32[S, P]: page ids of each sequence
    cu_q_lens: jax.Array  # i32[S + 1]: sequence s owns tokens cu_q_lens[s]:cu_q_lens[s + 1]
    num_seqs: jax.Array  # i32[1]: rows of kv_lens/page_table in use


@dataclasses.dataclass(frozen=True)
class AttentionBackend:
    """The two functions a layer calls; both take the layout in kernels/.../cpu_attention.py."""

    name: str
    attention: Callable[..., jax.Array]  # ragged_paged_attention(q, kv_pages, kv_lens, ...)
    update_kv: Callable[..., jax.Array]  # update_kv_pages(kv_pages, k, v, slot_mapping)
    # the dtype a K/V cache of a given dtype is allocated in: the CPU backend's kv_storage_dtype
    # (bfloat16 as uint16 bits), jnp.dtype for the kernels. No default: the CPU backend given a
    # real bfloat16 cache converts the whole cache on every gather (kernels/.../kv_storage.py)
    kv_storage_dtype: Callable[[Any], Any]
