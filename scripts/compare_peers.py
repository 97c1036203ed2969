"""jaxserve against its CPU peers (vLLM CPU, llama.cpp) side by side, one server at a time.

For each server: start it on 127.0.0.1, time start to ready, run bench_serving.py's workloads
(c=1, 4, 16 at 128 in / 128 out; c=4 at 512 in / 32 out; c=1 on stdlib code to rewrite, up to
1024 in / 128 out, where prompt lookup drafts hit), sample the peak memory of its process tree,
stop it. Then write the table (jaxserve / best peer ratios) and the raw numbers into
docs/performance.md between its generated-section markers. Peers are installed first if missing
(scripts/peers/install.sh: minutes for vLLM, ~4 min of compiling for llama.cpp).

    python scripts/compare_peers.py                       # all three, writes docs/performance.md
    python scripts/compare_peers.py --servers jaxserve,vllm --check-vllm-bench
    python scripts/compare_peers.py --servers jaxserve-ngram,vllm-ngram,llamacpp-q4_1-lookup
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers.report import write_report
from peers.servers import (
    GGUF_F32,
    GGUF_Q4_1,
    PEERS_DIR,
    ROOT,
    SERVED_NAME,
    RunningServer,
    is_ours,
    server_specs,
    set_priority,
)

from jaxserve.hardware import CpuInfo


class Workload(NamedTuple):
    name: str
    concurrency: int
    input_len: int  # exact for random prompts, at most for lookup ones
    output_len: int
    num_prompts: int  # each level is also time-bounded
    dataset: str = "random"  # bench_serving's --dataset


WORKLOADS = [
    Workload("c=1", 1, 128, 128, 8),
    Workload("c=4", 4, 128, 128, 16),
    Workload("c=16", 16, 128, 128, 48),
    Workload("c=4, 512 in / 32 out", 4, 512, 32, 16),
    Workload("lookup c=1", 1, 1024, 128, 8, "lookup"),
]


def ensure_installed(servers: list[str], log_dir: Path) -> None:
    for name in servers:
        if is_ours(name):
            continue
        with open(log_dir / f"install_{name}.log", "a") as log:
            peer = name.split("-")[0]  # llamacpp-q4_1 is llama.cpp with another file
            subprocess.run([str(ROOT / "scripts/peers/install.sh"), peer], check=True,
                           stdout=log, stderr=subprocess.STDOUT)


def ensure_gguf(servers: list[str]) -> None:
    """llama.cpp's input, written from jaxserve's weights (with --no-install too: it is data)."""
    ggufs = (({"llamacpp"}, GGUF_F32, []),
             ({"llamacpp-q4_1", "llamacpp-q4_1-lookup"}, GGUF_Q4_1, ["--shipped"]))
    for names, path, flags in ggufs:
        if names & set(servers) and not path.exists():
            subprocess.run([sys.executable, str(ROOT / "scripts/peers/gguf_f32.py"), *flags,
                            str(path)], check=True)


def bench(server: RunningServer, workload: Workload, args: argparse.Namespace, out_dir: Path
          ) -> dict[str, Any]:
    """bench_serving's one level; a failed run is recorded as its error, not raised."""
    w = workload
    dataset = "" if w.dataset == "random" else f"{w.dataset}_"
    result_path = (out_dir / f"{server.spec.name}_{dataset}{w.input_len}x{w.output_len}"
                   f"_c{w.concurrency}.json")
    cmd = [sys.executable, str(ROOT / "scripts/bench_serving.py"), "--base-url", server.base_url,
           "--model", SERVED_NAME, "--tokenizer", str(args.model_dir), "--dataset", w.dataset,
           "--concurrency", str(w.concurrency), "--input-len", str(w.input_len),
           "--output-len", str(w.output_len), "--num-prompts", str(w.num_prompts),
           "--max-duration", str(args.max_duration),
           "--label", f"{server.spec.name} {w.name}", "--result-json", str(result_path),
           "--no-progress", *server.spec.bench_args]
    try:
        done = subprocess.run(cmd, check=False, timeout=args.max_duration * 3 + 600,
                              stderr=subprocess.PIPE, text=True)
    except subprocess.TimeoutExpired:
        return {"dataset": w.dataset, "error": "bench_serving.py timed out"}
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        return {"dataset": w.dataset, "error": _last_error(done.stderr.splitlines())}
    return {**json.loads(result_path.read_text())["levels"][0], "dataset": w.dataset}


def vllm_bench_serve(server: RunningServer, args: argparse.Namespace, out_dir: Path
                     ) -> dict[str, Any]:
    """The reference load generator on the c=4 workload, for comparison with bench_serving."""
    name = "vllm_bench_serve_128x128_c4.json"
    cmd = [str(PEERS_DIR / "vllm-venv/bin/vllm"), "bench", "serve", "--backend", "vllm",
           "--base-url", server.base_url, "--endpoint", "/v1/completions",
           "--model", str(args.model_dir), "--served-model-name", SERVED_NAME,
           "--dataset-name", "random", "--random-input-len", "128", "--random-output-len", "128",
           "--num-prompts", "16", "--max-concurrency", "4", "--num-warmups", "4",
           "--temperature", "0", "--percentile-metrics", "ttft,tpot,itl,e2el",
           "--metric-percentiles", "50,99", "--save-result", "--result-dir", str(out_dir),
           "--result-filename", name, "--disable-tqdm",
           *(["--ignore-eos"] if "--eos-bias" not in server.spec.bench_args else [])]
    with open(out_dir / "vllm_bench_serve.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=900,
                       env={**os.environ, "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1"})
    return json.loads((out_dir / name).read_text())


def run_server(name: str, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    spec = server_specs(args.model_dir, args.port)[name]
    record: dict[str, Any] = {"name": name, "note": spec.note, "argv": spec.argv,
                              "loadavg_before": list(os.getloadavg()), "workloads": {}}
    if name in args.cold_start.split(","):  # empty compile caches
        with tempfile.TemporaryDirectory() as cache:
            cold_env = {"JAXSERVE_COMPILE_CACHE": cache, "VLLM_CACHE_ROOT": cache}
            cold = RunningServer(spec, args.port, out_dir / f"{name}_cold.log", cold_env,
                                 nice=args.nice)
            record["cold_ready_s"] = cold.wait_ready(args.ready_timeout)
            cold.stop()
    print(f"== {name}: starting ({' '.join(spec.argv)})", flush=True)
    server = RunningServer(spec, args.port, out_dir / f"{name}.log", nice=args.nice)
    try:
        record["ready_s"] = server.wait_ready(args.ready_timeout)
        if record["ready_s"] is None:
            # a server that refuses a flag (vLLM CPU and speculative decoding) exits saying why
            exited = server.proc.poll() is not None
            why = (_last_error(server.log_path.read_text(errors="replace").splitlines())
                   if exited else f"not ready in {args.ready_timeout:.0f} s")
            record["error"] = f"{'exited: ' if exited else ''}{why}; see {server.log_path}"
            print(f"== {name}: {record['error']}", flush=True)
            return record
        record["rss_at_ready"] = server.peak_rss
        print(f"== {name}: ready in {record['ready_s']:.1f} s", flush=True)
        for workload in WORKLOADS:
            if args.quick:
                workload = workload._replace(num_prompts=max(workload.concurrency, 2))
            record["workloads"][workload.name] = bench(server, workload, args, out_dir)
            record["workloads"][workload.name]["loadavg_after"] = list(os.getloadavg())
        if args.check_vllm_bench and name == args.check_vllm_bench_on:
            record["vllm_bench_serve"] = vllm_bench_serve(server, args, out_dir)
            record["bench_serving_repeat"] = bench(
                server, Workload("c=4 (repeat)", 4, 128, 128, 16), args, out_dir / "repeat")
        if is_ours(name):
            metrics = server.get("/metrics").splitlines()
            record["metrics_tail"] = [line for line in metrics if line.startswith(
                ("jaxserve:compilations", "jaxserve:spec_decode"))]
            record["dtypes"] = _served_dtypes(metrics)
    finally:
        server.stop()
        record["peak_rss"], record["peak_pss"] = server.peak_rss, server.peak_pss
        record["loadavg_after"] = list(os.getloadavg())
    return record


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="jaxserve,vllm,llamacpp")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="the HF folder all servers load (default: jaxserve's pulled SmolLM2)")
    p.add_argument("--port", type=int, default=8311)
    p.add_argument("--max-duration", type=float, default=180.0,
                   help="per workload: stop sending after this many seconds")
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--cold-start", default="", metavar="SERVERS",
                   help="servers to also start once with empty compile caches, e.g. jaxserve,vllm")
    p.add_argument("--check-vllm-bench", action="store_true",
                   help="also run `vllm bench serve` at c=4 against one server")
    p.add_argument("--check-vllm-bench-on", default="vllm")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2+ prompts a workload")
    p.add_argument("--out-dir", type=Path, default=PEERS_DIR / "results" / time.strftime(
        "%Y%m%d-%H%M%S"), help="raw JSON results and server logs")
    p.add_argument("--doc", type=Path, default=ROOT / "docs/performance.md")
    p.add_argument("--no-install", action="store_true")
    p.add_argument("--nice", type=int, default=0,
                   help="scheduling priority (-20..19) of the servers and the load generator over "
                        "other sessions' processes; see docs/performance.md")
    return p


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # so `finally` stops the running server's process group


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.nice:  # for the load generator; each server gets it in RunningServer
        set_priority(os.getpid(), args.nice)
    if args.model_dir is None:
        from jaxserve.pull import resolve_model

        args.model_dir = resolve_model(SERVED_NAME)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_install:
        ensure_installed(servers, args.out_dir)
    ensure_gguf(servers)
    run = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "loadavg_start": list(os.getloadavg()),
           "nice": args.nice,
           **_machine(), "nproc": os.cpu_count(),
           "commit": _commit(), "command": _command(argv),
           "workloads": [w.name for w in WORKLOADS],
           "servers": {}}
    for name in servers:
        run["servers"][name] = run_server(name, args, args.out_dir)
        (args.out_dir / "compare_peers.json").write_text(json.dumps(run, indent=1))
    run["loadavg_end"] = list(os.getloadavg())
    (args.out_dir / "compare_peers.json").write_text(json.dumps(run, indent=1))
    write_report(run, args.doc, args.out_dir)
    print(f"wrote {args.doc} and {args.out_dir}/compare_peers.json")


# the instruction sets that change which dtypes and kernels run fast on XLA:CPU
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def _machine() -> dict[str, Any]:
    cpu = CpuInfo.read()
    return {"cpu": cpu.model or "unknown",
            "cpu_flags": [flag for flag in _CPU_FLAGS if flag in cpu.flags]}


def _served_dtypes(metrics: list[str]) -> str | None:
    """'weights bfloat16, K/V bfloat16 (auto: ...)' from jaxserve:dtype_info's labels."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families("\n".join(metrics) + "\n"):
        if family.name == "jaxserve:dtype_info" and family.samples:
            labels = family.samples[0].labels
            return (f"weights {labels['weights']}, K/V {labels['kv_cache']} "
                    f"({labels['reason']})")
    return None


def _last_error(lines: list[str]) -> str:
    """What went wrong, from a log or traceback: the last exception line with the two lines after
    it (pydantic puts the reason there), skipping vLLM's "see root cause above" wrapper; else
    the last line that says error, else the last line."""
    lines = [line.strip() for line in lines if line.strip()]
    raised = [i for i, line in enumerate(lines) if re.search(r"\w(Error|Exception): ", line)]
    cause = [i for i in raised if "root cause above" not in lines[i]]
    if cause:
        after = lines[cause[-1] + 1:cause[-1] + 3]
        stop = next((j for j, line in enumerate(after)
                     if line.startswith("Traceback") or re.search(r"\w(Error|Exception): ", line)),
                    len(after))
        return " / ".join([lines[cause[-1]], *after[:stop]])[:500]
    named = [line for line in lines if "error" in line.lower()]
    return (named or lines or ["no output"])[-1][:500]


def _command(argv: list[str] | None) -> str:
    return " ".join(["python scripts/compare_peers.py", *(sys.argv[1:] if argv is None else argv)])


def _commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                          check=False, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
