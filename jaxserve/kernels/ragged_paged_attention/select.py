"""Choose the attention and KV-write functions the model calls: Pallas kernels or the CPU backend.

The config value "reference" names the CPU backend (``cpu_attention.py``). ``auto`` means: the
Pallas (Triton) kernels on a GPU, the CPU backend everywhere else. On CPU the kernels only run in
interpret mode, which loses decode-only steps (most steps of a serving run) and compiles more
slowly, while it wins prefill-heavy steps, so a prefill-heavy CPU workload may prefer "pallas";
``scripts/bench_kernel.py`` measures both (table in ``docs/kernels.md``). On TPU the Triton
kernel cannot lower at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import jax

from jaxserve.kernels.ragged_paged_attention.cpu_attention import (
    cpu_ragged_paged_attention,
    cpu_update_kv_pages,
)
from jaxserve.kernels.ragged_paged_attention.kernel import ragged_paged_attention
from jaxserve.kernels.ragged_paged_attention.kv_write import update_kv_pages

Backend = Literal["pallas", "reference", "auto"]  # "reference": the CPU backend
Resolved = Literal["pallas", "reference"]
# what "auto" resolves to on each platform; the module docstring says why CPU is "reference"
AUTO_BACKEND: dict[str, Resolved] = {"gpu": "pallas", "cpu": "reference", "tpu": "reference"}


def resolve_backend(backend: str, platform: str | None = None) -> Resolved:
    """``auto`` -> a concrete backend for ``platform`` (default: jax.default_backend())."""
    if backend not in get_args(Backend):
        raise ValueError(f"attention backend {backend!r} is not one of {get_args(Backend)}")
    platform = platform or jax.default_backend()
    if backend == "auto":
        return AUTO_BACKEND.get(platform, "reference")
    if backend == "pallas" and platform not in ("gpu", "cpu"):
        raise ValueError(f"the Pallas kernels target NVIDIA GPUs (Triton), not {platform!r}")
    return backend  # type: ignore[return-value]


AttentionFn = Callable[..., jax.Array]  # cpu_ragged_paged_attention's signature
UpdateFn = Callable[..., jax.Array]  # cpu_update_kv_pages's signature


def get_attention_fns(backend: Backend) -> tuple[AttentionFn, UpdateFn]:
    """(attention_fn, update_fn) for ``backend``; "auto" is resolved for the default platform."""
    if resolve_backend(backend) == "pallas":
        # interpret=None: they run in interpret mode when the default backend is the CPU
        return ragged_paged_attention, update_kv_pages
    return cpu_ragged_paged_attention, cpu_update_kv_pages
