"""`jaxserve run` as a user starts it: progress on stderr, /health 503 then 200, SIGTERM letting
the stream in flight finish before the process exits 0, a drain timeout cutting a drain short,
and a second signal exiting at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import msgspec
import pytest

from tests.support.configs import ROOT, TINY_CONFIG
from tests.support.subprocess_server import free_port, start_server, stop


def test_run_reports_progress_and_drains_on_sigterm(tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAXSERVE_API_KEY": "k"}
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jaxserve.cli", "run", "--config", str(TINY_CONFIG),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=stderr, stderr=stderr, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer k"}
    try:
        statuses = []
        deadline = time.monotonic() + 240
        while not statuses or statuses[-1] != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                statuses.append(httpx.get(url + "/health", timeout=5).status_code)
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert set(statuses) <= {503, 200}
        startup = log.read_text()
        assert "compiled bucket 1/" in startup and "ready" in startup

        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 60,
                "ignore_eos": True, "stream": True}
        with (httpx.Client(base_url=url, headers=headers, timeout=60) as client,
              client.stream("POST", "/v1/chat/completions", json=body) as response):
            lines = response.iter_lines()
            first = next(line for line in lines if line)
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert first.startswith("data: ")
        assert rest[-1] == "data: [DONE]"
        finishes = [c["finish_reason"] for line in rest[:-1]
                    for c in msgspec.json.decode(line[6:])["choices"] if c["finish_reason"]]
        assert finishes == ["length"]
        # a clean drain is a clean exit (uvicorn alone re-raises the SIGTERM: 143)
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert "Application shutdown complete" in log.read_text()
    finally:
        stop(proc)


# eight samples of 500 tokens, twice over: seconds of work for the tiny model
LONG = {"prompt": "hi", "max_tokens": 500, "ignore_eos": True, "n": 8, "stream": True}


def signal_mid_stream(proc: subprocess.Popen, url: str, *signals: signal.Signals,
                      finished: list | None = None, behind: int = 3) -> list[str]:
    """Send the signals once a long stream has begun and `behind` more requests are queued
    after it; the data lines the client got after.
    finished: gets True appended for each queued request that completed."""
    def queue_behind() -> None:  # more work, so the drain cannot end before the signals
        try:
            done = httpx.post(url + "/v1/completions", json={**LONG, "stream": False},
                              timeout=60)
            if finished is not None and done.status_code == 200:
                finished.append(True)
        except httpx.HTTPError:  # the server went away first
            pass

    lines = []
    try:
        with (httpx.Client(base_url=url, timeout=60) as client,
              client.stream("POST", "/v1/completions", json=LONG) as response):
            stream = response.iter_lines()
            assert next(line for line in stream if line).startswith("data: ")
            # queued only now, so they wait behind the stream, which fills every slot
            for _ in range(behind):
                threading.Thread(target=queue_behind, daemon=True).start()
            time.sleep(0.2)
            for sig in signals:
                proc.send_signal(sig)
                time.sleep(0.2)
            lines = [line for line in stream if line]
    except httpx.HTTPError:  # the server cut the stream
        pass
    return lines


def test_a_drain_timeout_cuts_the_drain_short_then_exits_0(tmp_path):
    proc, url, log = start_server(tmp_path, "--drain-timeout", "0.5")
    try:
        started = time.monotonic()
        behind: list = []
        signal_mid_stream(proc, url, signal.SIGTERM, finished=behind, behind=4)
        assert proc.wait(timeout=30) == 0, log.read_text()
        # the stream may just finish inside the timeout; all four queued behind it cannot
        assert len(behind) < 4, "the drain ran every request to the end"
        assert time.monotonic() - started < 30
        assert "Application shutdown complete" in log.read_text()
    finally:
        stop(proc)


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_exits_at_once(tmp_path, second):
    proc, url, log = start_server(tmp_path)
    try:
        lines = signal_mid_stream(proc, url, signal.SIGTERM, second)
        assert proc.wait(timeout=10) == 128 + second, log.read_text()
        assert "data: [DONE]" not in lines
        assert "exiting without draining" in log.read_text()
    finally:
        stop(proc)
