"""What the processor offers, read without jax, and the dtypes ``auto`` picks from it.

``model.weight_dtype: auto`` stores the weights in bfloat16 where the hardware multiplies
bfloat16 natively (a GPU of compute capability 8.0 or newer, a CPU with ``avx512_bf16`` or
``amx_bf16``) and in float32 elsewhere: XLA:CPU without those instructions converts bfloat16
to float32 in software, which costs more than the halved bytes save (docs/performance.md,
"Processor kinds"). ``cache.dtype: auto`` follows the weights, as vLLM's ``--kv-cache-dtype
auto`` follows the model. Under int8 weights (models/layers.py) K/V stay a float dtype: ``auto``
takes the one ``weight_dtype: auto`` would have chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# the x86 flags under which XLA:CPU runs bfloat16 dots in hardware
FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CpuInfo:
    model: str  # /proc/cpuinfo's "model name", "" where unknown
    flags: frozenset[str]

    @classmethod
    def read(cls, path: str | Path = "/proc/cpuinfo") -> CpuInfo:
        try:
            text = Path(path).read_text()
        except OSError:  # not Linux: no flags known, so auto takes the safe float32
            return cls("", frozenset())
        model, flags = "", frozenset()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
        return cls(model, flags)


@dataclass(frozen=True)
class DtypeChoice:
    activations: str
    weights: str
    kv_cache: str
    reason: str  # one clause, printed at start and shown in /metrics


def choose_dtypes(activations: str, weights: str | None, kv_cache: str, platform: str, *,
                  cpu: CpuInfo | None = None,
                  compute_capability: str | None = None) -> DtypeChoice:
    """Resolve ``auto`` (and weights None, meaning the activations' dtype) to concrete dtypes.

    platform: jax's backend name ("cpu", "gpu", "cuda", "tpu"); compute_capability: a CUDA
    device's, e.g. "9.0"."""
    reason = "as configured"
    if weights is None:
        weights = activations
    elif weights == "auto":
        weights, reason = _auto_weights(activations, platform, cpu, compute_capability)
    kv = weights if kv_cache == "auto" else kv_cache
    if kv == "int8":  # K/V are not quantized: the float dtype auto picks for this hardware
        kv, why = _auto_weights(activations, platform, cpu, compute_capability)
        reason = f"int8 weights; K/V {why}"
    return DtypeChoice(activations, weights, kv, reason)


def _auto_weights(activations: str, platform: str, cpu: CpuInfo | None,
                  compute_capability: str | None) -> tuple[str, str]:
    if activations == "bfloat16":
        return "bfloat16", "auto: bfloat16 activations"
    if platform in ("gpu", "cuda", "rocm"):
        # unknown: assume a GPU of this decade, all of which multiply bfloat16
        major = int(compute_capability.split(".")[0]) if compute_capability else 8
        if platform == "rocm" or major >= 8:
            return "bfloat16", f"auto: a GPU of compute capability {compute_capability or '?'}"
        return "float32", f"auto: compute capability {compute_capability or '?'} has no bfloat16"
    if platform == "cpu":
        fast = [flag for flag in FAST_BF16_CPU_FLAGS if cpu and flag in cpu.flags]
        if fast:
            return "bfloat16", f"auto: the CPU has {' and '.join(fast)}"
        return "float32", "auto: the CPU has no avx512_bf16 or amx_bf16, so bfloat16 is emulated"
    return "bfloat16", f"auto: {platform} multiplies bfloat16 natively"
