"""`jaxserve run` as a subprocess on the tiny model, for the tests of what a process does
(signals, exit codes, faults); it imports this checkout's jaxserve."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx

from tests.support.configs import ROOT, TINY_CONFIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(tmp_path, *flags: str, env: dict[str, str] | None = None
                 ) -> tuple[subprocess.Popen, str, object]:
    """`jaxserve run` on the tiny model, once /health says 200; (process, url, log path).
    env: variables added to this process's."""
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jaxserve.cli", "run", "--config", str(TINY_CONFIG),
             "--host", "127.0.0.1", "--port", str(port), *flags],
            stdout=stderr, stderr=stderr, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            pass
        time.sleep(0.1)
