"""Which functions each ``model.attention_backend`` value selects."""

from __future__ import annotations

import pytest

from jaxserve.kernels.ragged_paged_attention import (
    cpu_ragged_paged_attention,
    cpu_update_kv_pages,
    ragged_paged_attention,
    update_kv_pages,
)
from jaxserve.kernels.ragged_paged_attention.select import get_attention_fns, resolve_backend


def test_select_backends():
    assert resolve_backend("auto", "gpu") == "pallas"
    assert resolve_backend("auto", "cpu") == "reference"  # bench_kernel.py: see select.py
    assert get_attention_fns("pallas") == (ragged_paged_attention, update_kv_pages)
    # "reference", the config value users have, names the CPU backend
    assert get_attention_fns("reference") == (cpu_ragged_paged_attention, cpu_update_kv_pages)
    with pytest.raises(ValueError, match="triton"):
        resolve_backend("triton")
