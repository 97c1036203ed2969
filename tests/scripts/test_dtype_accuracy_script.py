"""scripts/bench_dtype_accuracy.py on the tiny model: float32 loaded and run twice must agree
exactly (the forward is deterministic and the metrics read it right), and bfloat16 must report a
real, finite difference."""

from __future__ import annotations

import json
import runpy
import sys

import numpy as np

from tests.support.configs import ROOT, TINY_CONFIG


def run(monkeypatch, tmp_path, dtype: str, *extra: str) -> dict:
    out = tmp_path / f"{dtype}{len(extra)}.json"
    monkeypatch.setattr(sys, "argv", ["bench_dtype_accuracy.py", "--config", str(TINY_CONFIG),
                                      "--dtype", dtype, "--tokens", "24", "--result-json", str(out),
                                      *extra])
    runpy.run_path(str(ROOT / "scripts" / "bench_dtype_accuracy.py"), run_name="__main__")
    return json.loads(out.read_text())


def test_same_dtype_agrees_exactly_and_bfloat16_does_not(monkeypatch, tmp_path, tiny_model_dir):
    same = run(monkeypatch, tmp_path, "float32")
    assert same["positions"] == 4 * 23
    assert same["top1_agreement"] == 1.0 and same["kl_mean"] == 0.0
    assert same["max_logprob_diff"] == 0.0
    assert same["perplexity"]["float32"] > 1.0
    bf16 = run(monkeypatch, tmp_path, "bfloat16")
    assert 0.0 < bf16["kl_mean"] < 1.0 and 0.0 < bf16["max_logprob_diff"]
    assert np.isfinite(bf16["perplexity"]["bfloat16"])
    assert bf16["perplexity"]["float32"] == same["perplexity"]["float32"]


def test_bfloat16_weights_under_float32_differ_less_than_bfloat16(monkeypatch, tmp_path,
                                                                  tiny_model_dir):
    mixed = run(monkeypatch, tmp_path, "float32", "--weight-dtype", "bfloat16")
    bf16 = run(monkeypatch, tmp_path, "bfloat16")
    assert set(mixed["perplexity"]) == {"float32", "float32+bfloat16-weights"}
    # bfloat16 weights round the model; float32 activations and K/V round nothing else
    assert 0.0 < mixed["kl_mean"] < bf16["kl_mean"]


def test_bfloat16_kv_through_the_page_walk_differs_but_little(monkeypatch, tmp_path,
                                                              tiny_model_dir):
    """--kv-dtype bfloat16 rounds only the cache: a nonzero difference, smaller than rounding
    every activation too; --walk-all alone changes the path, not the answer."""
    walk = run(monkeypatch, tmp_path, "float32", "--walk-all")
    assert walk["kl_mean"] < 1e-9 and walk["top1_agreement"] == 1.0
    kv = run(monkeypatch, tmp_path, "float32", "--kv-dtype", "bfloat16", "--walk-all")
    assert set(kv["perplexity"]) == {"float32", "float32+bfloat16-kv"}
    bf16 = run(monkeypatch, tmp_path, "bfloat16", "--walk-all")
    assert 0.0 < kv["kl_mean"] < bf16["kl_mean"]
