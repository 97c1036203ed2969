"""Pick the attention backend the model's layers call (``model.attention_backend`` config)."""

from __future__ import annotations

import jax.numpy as jnp

from jaxserve.models.attention_metadata import AttentionBackend
from jaxserve.kernels.ragged_paged_attention.kv_storage import kv_storage_dtype


def make_attention_backend(name: str) -> AttentionBackend:
    if name == "reference":  # the pure-jnp fallback needs no kernel machinery
        from jaxserve.kernels.ragged_paged_attention.reference import (
            ref_ragged_paged_attention,
            ref_update_kv_pages,
        )

        return AttentionBackend("reference", ref_ragged_paged_attention, ref_update_kv_pages,
                                kv_storage_dtype)
    from jaxserve.kernels.ragged_paged_attention.select import get_attention_fns, resolve_backend

    resolved = resolve_backend(name)
    attention, update_kv = get_attention_fns(resolved)
    storage = kv_storage_dtype if resolved == "reference" else jnp.dtype  # kernels: as is
    return AttentionBackend(name=resolved, attention=attention, update_kv=update_kv,
                            kv_storage_dtype=storage)
