"""Pick the attention backend the model's layers call (``model.attention_backend`` config)."""

from __future__ import annotations

import jax.numpy as jnp

from jaxserve.kernels.ragged_paged_attention.kv_storage import kv_storage_dtype
from jaxserve.models.attention_metadata import AttentionBackend


def make_attention_backend(name: str) -> AttentionBackend:
    if name == "reference":  # the CPU backend: no backend resolution needed
        from jaxserve.kernels.ragged_paged_attention.cpu_attention import (
            cpu_ragged_paged_attention,
            cpu_update_kv_pages,
        )

        return AttentionBackend("reference", cpu_ragged_paged_attention, cpu_update_kv_pages,
                                kv_storage_dtype)
    from jaxserve.kernels.ragged_paged_attention.select import get_attention_fns, resolve_backend

    resolved = resolve_backend(name)
    attention, update_kv = get_attention_fns(resolved)
    storage = kv_storage_dtype if resolved == "reference" else jnp.dtype  # kernels: as is
    return AttentionBackend(name=resolved, attention=attention, update_kv=update_kv,
                            kv_storage_dtype=storage)
