"""scripts/gpu_check.py --dry-run on CPU: the Pallas kernels interpreted against the oracle, the
timings against a measured floor, tensor parallelism on two forced devices; a report written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.configs import ROOT


def test_gpu_check_dry_run_passes_and_writes_its_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAXSERVE_COMPILE_CACHE": "off",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["ok"] and report["dry_run"] and report["num_devices"] == 2
    kernels = report["kernels"]
    assert len(kernels["cases"]) == 32 and all(c["ok"] for c in kernels["cases"])
    assert kernels["kv_write_exact"]
    assert report["attention"]["ms"] > 0 and report["attention"]["floor_ms"] > 0
    step = report["decode_step"]
    assert step["decode_1_ms"] > 0 and step["decode_16_ms"] > 0 and step["weight_bytes"] > 0
    assert report["tensor_parallel"]["sizes"]["2"]["greedy_same"]
    assert "Result: **pass**" in (tmp_path / "gpu_check.md").read_text()
