"""A short scripts/soak.py run against a live tiny-model server: streams, hang-ups and bad inputs
mixed, and every check at the end passes (token counts, no 5xx, pages free, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.configs import ROOT
from tests.support.subprocess_server import start_server


def test_a_short_soak_passes_its_checks(tmp_path):
    proc, url, log = start_server(tmp_path, env={"JAXSERVE_API_KEY": "soak"})
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "soak.py"), "--url", url, "--api-key",
             "soak", "--streams", "6", "--minutes", "0.25", "--max-tokens", "16",
             "--bad-fraction", "0.3", "--pid", str(proc.pid), "--log", str(log),
             "--max-rss-growth", "0.5"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        summary = json.loads(done.stdout[:done.stdout.rindex("}") + 1])
        counts = summary["counts"]
        assert counts["completed"] > 0 and counts["hung up"] > 0
        assert counts["bad input refused"] > 0 and summary["kv_cache_usage_at_end"] == 0
    finally:
        proc.kill()
        proc.wait()
