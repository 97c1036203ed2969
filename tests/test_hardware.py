"""hardware.py: the processor's flags read from /proc/cpuinfo, and what ``auto`` makes of them."""

import pytest

from jaxserve.hardware import CpuInfo, choose_dtypes

AVX2 = CpuInfo("AMD EPYC", frozenset({"avx2", "fma"}))
AVX512_BF16 = CpuInfo("AMD EPYC", frozenset({"avx2", "avx512f", "avx512_bf16"}))
AMX = CpuInfo("Intel Xeon", frozenset({"avx512f", "amx_bf16"}))


def test_cpuinfo_reads_the_first_model_name_and_flags(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 fma\n\n"
                    "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    info = CpuInfo.read(path)
    assert info.model == "AMD EPYC 9B14" and info.flags == {"fpu", "avx2", "fma"}
    assert CpuInfo.read(tmp_path / "missing") == CpuInfo("", frozenset())


@pytest.mark.parametrize("platform, cpu, cc, expected", [
    ("cpu", AVX2, None, "float32"),
    ("cpu", AVX512_BF16, None, "bfloat16"),
    ("cpu", AMX, None, "bfloat16"),
    ("cpu", None, None, "float32"),
    ("gpu", None, "9.0", "bfloat16"),
    ("cuda", None, "8.0", "bfloat16"),
    ("gpu", None, "7.5", "float32"),
    ("gpu", None, None, "bfloat16"),
    ("tpu", None, None, "bfloat16"),
])
def test_auto_weights_follow_the_hardware_and_the_cache_follows_the_weights(
        platform, cpu, cc, expected):
    choice = choose_dtypes("float32", "auto", "auto", platform, cpu=cpu, compute_capability=cc)
    assert (choice.activations, choice.weights, choice.kv_cache) == ("float32", expected, expected)
    assert choice.reason.startswith("auto: ")


def test_the_reason_names_the_flag_or_its_absence():
    assert "avx512_bf16" in choose_dtypes("float32", "auto", "auto", "cpu", cpu=AVX512_BF16).reason
    assert "emulated" in choose_dtypes("float32", "auto", "auto", "cpu", cpu=AVX2).reason


def test_explicit_values_are_kept_and_none_means_the_activations_dtype():
    assert choose_dtypes("float32", "bfloat16", "float32", "cpu", cpu=AVX2) == choose_dtypes(
        "float32", "bfloat16", "float32", "gpu")
    kept = choose_dtypes("float32", "bfloat16", "float32", "cpu", cpu=AVX2)
    assert (kept.weights, kept.kv_cache, kept.reason) == ("bfloat16", "float32", "as configured")
    plain = choose_dtypes("float32", None, "auto", "cpu", cpu=AVX512_BF16)
    assert (plain.weights, plain.kv_cache) == ("float32", "float32")
    assert choose_dtypes("bfloat16", "auto", "auto", "cpu", cpu=AVX2).weights == "bfloat16"
    assert choose_dtypes("float32", "auto", "bfloat16", "cpu", cpu=AVX2).kv_cache == "bfloat16"


def test_an_engine_with_auto_dtypes_serves_what_this_machine_gets(tiny_model_dir):
    import jax.numpy as jnp

    from jaxserve.llm import LLM
    from tests.support.configs import TINY_CONFIG

    llm = LLM(TINY_CONFIG, progress=False, **{"model.weight_dtype": "auto", "cache.dtype": "auto",
                                              "scheduler.token_buckets": [64]})
    expected = choose_dtypes("float32", "auto", "auto", "cpu", cpu=CpuInfo.read())
    assert llm.info.dtypes == expected
    caches = {c.dtype for c in llm.engine.runner.kv_caches}
    assert caches == ({jnp.dtype(jnp.float32)} if expected.kv_cache == "float32"
                      else {jnp.dtype(jnp.uint16)})


@pytest.mark.parametrize("cpu, kv", [(AVX2, "float32"), (AMX, "bfloat16")])
def test_int8_weights_keep_a_float_cache_that_auto_picks_for_the_hardware(cpu, kv):
    choice = choose_dtypes("float32", "int8", "auto", "cpu", cpu=cpu)
    assert (choice.weights, choice.kv_cache) == ("int8", kv)
    assert choice.reason.startswith("int8 weights; K/V auto: ")
    assert choose_dtypes("float32", "int8", "float32", "cpu", cpu=AMX).kv_cache == "float32"
