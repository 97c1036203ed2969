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
    wait_healthy(url, [proc], log.read_text)
    return proc, url, log


def wait_healthy(url: str, procs: list[subprocess.Popen], logs, timeout: float = 300) -> None:
    """Until url's /health says 200; fails with logs() if a process ends or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        assert all(p.poll() is None for p in procs), logs()
        assert time.monotonic() < deadline, logs()
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def stop(*procs: subprocess.Popen) -> None:
    """Kill what still runs (a test's cleanup, whatever it asserted)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
