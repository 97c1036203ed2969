"""Two processes of two forced CPU devices each, one mesh through jax.distributed: rank 0 serves
HTTP at tensor parallel 4 with one process's greedy tokens; SIGTERM to rank 0 drains and stops
the follower; a follower that dies makes rank 0 exit non-zero within seconds, hanging nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.support.configs import ROOT, TINY_CONFIG
from tests.support.subprocess_server import free_port, stop, wait_healthy

KEY = "mh-key"
PROMPTS = ["hello there", "the quick brown fox " * 6, "a"]


def start_pair(tmp_path) -> tuple[subprocess.Popen, subprocess.Popen, str]:
    master, port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAXSERVE_API_KEY": KEY,
           "JAXSERVE_COMPILE_CACHE": "off",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    common = [sys.executable, "-m", "jaxserve.cli", "run", "--config", str(TINY_CONFIG),
              "-tp", "4", "--nnodes", "2", "--master-addr", "127.0.0.1",
              "--master-port", str(master)]
    procs = []
    for rank in (1, 0):
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([*common, "--node-rank", str(rank), "--host", "127.0.0.1",
                                       "--port", str(port)], stdout=log, stderr=log, env=env,
                                      cwd=ROOT))
    follower, leader = procs
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, procs, lambda: logs(tmp_path))
    return leader, follower, url


def logs(tmp_path) -> str:
    return "\n".join((tmp_path / f"rank{r}.log").read_text()[-2000:] for r in (0, 1))


def completions(base_url: str, api_key: str, model: str) -> list[list[str]]:
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    out = []
    for prompt in PROMPTS:
        reply = client.completions.create(model=model, prompt=prompt, max_tokens=16,
                                          temperature=0, logprobs=1)
        out.append(reply.choices[0].logprobs.tokens)
    return out


def test_two_processes_serve_one_processs_tokens_and_stop_together(tmp_path, live_server):
    leader, follower, url = start_pair(tmp_path)
    try:
        one = completions(live_server.base_url, live_server.api_key, live_server.model)
        assert completions(url + "/v1", KEY, live_server.model) == one
        leader.send_signal(signal.SIGTERM)
        assert leader.wait(timeout=60) == 0, logs(tmp_path)
        assert follower.wait(timeout=30) == 0, logs(tmp_path)  # told to stop by rank 0
        assert "rank 0 stopped" in (tmp_path / "rank1.log").read_text()
    finally:
        stop(leader, follower)


@pytest.mark.timeout(240)
def test_a_lost_follower_fails_rank_0_loudly(tmp_path, live_server):
    leader, follower, url = start_pair(tmp_path)
    try:
        follower.kill()
        lost = time.monotonic()
        try:  # a request now either fails or is answered: it never hangs
            httpx.post(url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                       json={"prompt": "hi", "max_tokens": 64}, timeout=45)
        except httpx.HTTPError:
            pass
        code = leader.wait(timeout=45)
        assert code != 0 and time.monotonic() - lost < 30, (code, logs(tmp_path))
    finally:
        stop(leader, follower)
