"""Ragged paged attention: a Pallas kernel (``kernel.py``) beside its pure-jnp reference."""

from kernels.ragged_paged_attention.reference import (
    ref_ragged_paged_attention,
    ref_update_kv_pages,
)

__all__ = ["ref_ragged_paged_attention", "ref_update_kv_pages"]
