"""Lower a jitted function for CUDA on a machine without a GPU, to prove the kernels lower.

``jax.export`` with ``platforms=["cuda"]`` runs the whole CUDA lowering path, including the
Pallas -> Triton IR translation of every kernel, and needs no GPU: with none present the Triton
lowering assumes compute capability 9.0 (H100). What it cannot prove: Triton's own compilation of
that IR to PTX, which XLA does when the executable is compiled on a real GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

# The custom call that carries a Pallas Triton kernel in this JAX (the 0.10 series). Export
# refuses custom calls it cannot promise to keep stable, so this one (and only this one) is
# allowed explicitly.
TRITON_CUSTOM_CALL = "__gpu$xla.gpu.triton"


def export_for_cuda(
    fn: Callable,
    *args,  # arrays or jax.ShapeDtypeStruct, as fn expects them
    allowed_custom_calls: Sequence[str] = (TRITON_CUSTOM_CALL,),
) -> str:
    """Exports jit(fn)(*args) for CUDA and returns the StableHLO text (MLIR)."""
    fn_jit = fn if hasattr(fn, "lower") else jax.jit(fn)
    checks = [jax.export.DisabledSafetyCheck.custom_call(c) for c in allowed_custom_calls]
    exported = jax.export.export(fn_jit, platforms=["cuda"], disabled_checks=checks)(*args)
    return exported.mlir_module()
