"""Ragged paged attention: a Pallas kernel (``kernel.py``) beside its pure-jnp reference."""

from jaxserve.kernels.ragged_paged_attention.kernel import ragged_paged_attention
from jaxserve.kernels.ragged_paged_attention.kv_write import update_kv_pages
from jaxserve.kernels.ragged_paged_attention.reference import (
    ref_ragged_paged_attention,
    ref_update_kv_pages,
)

__all__ = [
    "ragged_paged_attention",
    "ref_ragged_paged_attention",
    "ref_update_kv_pages",
    "update_kv_pages",
]
