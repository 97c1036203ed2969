"""`jaxserve run` as a user starts it: progress on stderr, /health 503 then 200, and SIGTERM
letting the stream in flight finish before the process exits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import msgspec

from tests.support.configs import ROOT, TINY_CONFIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        # uvicorn re-raises the SIGTERM once it has drained, so the exit says what ended it
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
        assert "Application shutdown complete" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
