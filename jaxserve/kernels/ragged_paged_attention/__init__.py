"""Ragged paged attention: a Pallas kernel (``kernel.py``), the CPU backend (``cpu_attention.py``)
and the oracle both are tested against (``oracle.py``)."""

from jaxserve.kernels.ragged_paged_attention.cpu_attention import (
    cpu_ragged_paged_attention,
    cpu_update_kv_pages,
)
from jaxserve.kernels.ragged_paged_attention.kernel import ragged_paged_attention
from jaxserve.kernels.ragged_paged_attention.kv_write import update_kv_pages

__all__ = [
    "cpu_ragged_paged_attention",
    "cpu_update_kv_pages",
    "ragged_paged_attention",
    "update_kv_pages",
]
