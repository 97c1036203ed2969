"""scripts/bench_structured.py runs end to end on the tiny model and reports both batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.configs import ROOT, TINY_CONFIG


def test_bench_structured_on_the_tiny_model():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_structured.py"), "--config",
         str(TINY_CONFIG), "--batch", "4", "--tokens", "12", "--repeats", "1",
         "--json"], capture_output=True, text=True, timeout=600, check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})  # this tree's jaxserve, not an installed one
    report = json.loads(result.stdout)
    assert report["constrained_sample"].startswith('{"items": ["')
    for name in ("none", "mixed"):
        assert report[name]["unconstrained_half_tok_s"] > 0 and report[name]["steps"] > 0
    # every mixed step has constrained rows, so none of it runs several steps per device call
    assert report["mixed"]["steps"] >= 12
    assert "unconstrained_half_slowdown_pct" in report and "cpu_slowdown_pct" in report
