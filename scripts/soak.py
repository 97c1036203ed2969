"""A bounded soak and chaos run against a live jaxserve: concurrent streams, clients that hang up
mid-stream, bad inputs mixed in, optionally a SIGTERM in the middle; then the checks.

    python scripts/soak.py --url http://127.0.0.1:8000 --api-key KEY --streams 64 --minutes 10 \
        --pid $(pgrep -f 'jaxserve run') --log server.log

Every request that was read to its end must have produced exactly its ``max_tokens`` (it asks
``ignore_eos``), every bad input must get a 4xx, no response may be a 5xx, and at the end (unless
SIGTERM ended the server) the server must be idle with every KV page free (``/metrics``), its RSS
grown by at most ``--max-rss-growth`` since the end of a warm-up, and its log free of
tracebacks. It prints a one-screen summary and exits non-zero on any failure. Traffic goes to
the given URL only; the loops are bounded by ``--minutes``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

# (what, body) pairs a client might send by mistake; each must get a 4xx and nothing else
BAD_INPUTS = [
    ("invalid JSON", b'{"messages": [}'),
    ("deep nesting", b'{"messages": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
    ("wrong type", json.dumps({"messages": "hi", "max_tokens": "many"}).encode()),
    ("negative max_tokens", json.dumps({"messages": [{"role": "user", "content": "hi"}],
                                        "max_tokens": -5}).encode()),
    ("unknown model", json.dumps({"model": "no-such-model",
                                  "messages": [{"role": "user", "content": "hi"}]}).encode()),
    ("lone surrogate", b'{"messages": [{"role": "user", "content": "\\ud800"}]}'),
    ("empty body", b""),
]


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []

    def add(self, key: str, failure: str | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if failure is not None and len(self.failures) < 50:
                self.failures.append(failure)


def one_stream(client: httpx.Client, args, rng: random.Random, tally: Tally) -> None:
    body = {"messages": [{"role": "user", "content": f"Tell me a story {rng.randrange(10**6)}."}],
            "max_tokens": args.max_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0.7}
    if args.model:
        body["model"] = args.model
    hang_up = rng.random() < args.disconnect_fraction
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code >= 500:
            tally.add("5xx", f"stream: status {response.status_code}")
            return
        if response.status_code != 200:  # 503 server_overloaded is a legitimate answer
            tally.add(f"status {response.status_code}")
            return
        usage, chunks = None, 0
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                tally.add("stream error", f"stream error event: {event['error']}")
                return
            chunks += 1
            usage = event.get("usage") or usage
            if hang_up and chunks >= 3:
                tally.add("hung up")
                return
    completion = (usage or {}).get("completion_tokens")
    if completion != args.max_tokens:
        tally.add("wrong token count",
                  f"completed with {completion} tokens, asked {args.max_tokens}")
    else:
        tally.add("completed")


def one_bad(client: httpx.Client, rng: random.Random, tally: Tally) -> None:
    what, body = rng.choice(BAD_INPUTS)
    response = client.post("/v1/chat/completions", content=body,
                           headers={"Content-Type": "application/json"})
    if 400 <= response.status_code < 500:
        tally.add("bad input refused")
    else:
        tally.add("5xx" if response.status_code >= 500 else "bad input accepted",
                  f"{what}: status {response.status_code}")


def worker(args, seed: int, deadline: float, stop: threading.Event, tally: Tally) -> None:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=args.request_timeout) as client:
        while time.monotonic() < deadline and not stop.is_set():
            try:
                if rng.random() < args.bad_fraction:
                    one_bad(client, rng, tally)
                else:
                    one_stream(client, args, rng, tally)
            except httpx.HTTPError as exc:
                if stop.is_set():  # the server was told to stop: connections end
                    tally.add("cut by SIGTERM")
                    return
                tally.add("transport error", f"{type(exc).__name__}: {exc}")


def rss_bytes(pid: int | None) -> int | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def kv_usage(client: httpx.Client) -> float | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("jaxserve:kv_cache_usage_perc"):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_idle(client: httpx.Client, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    usage = kv_usage(client)
    while usage and time.monotonic() < deadline:
        time.sleep(0.5)
        usage = kv_usage(client)
    return usage


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=os.environ.get("JAXSERVE_API_KEY"))
    p.add_argument("--model", default=None)
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--disconnect-fraction", type=float, default=1 / 3)
    p.add_argument("--bad-fraction", type=float, default=0.1)
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--pid", type=int, default=None, help="the server's pid: RSS, SIGTERM")
    p.add_argument("--log", type=Path, default=None, help="the server's log: no tracebacks")
    p.add_argument("--sigterm-after", type=float, default=None, metavar="SECONDS",
                   help="send the server SIGTERM this long into the run (needs --pid)")
    p.add_argument("--max-rss-growth", type=float, default=0.05)
    p.add_argument("--warmup-minutes", type=float, default=0.5,
                   help="traffic before the RSS baseline is read: first-use allocations of the "
                        "server (connection buffers, executables' scratch) are not growth")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    tally, stop = Tally(), threading.Event()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    admin = httpx.Client(base_url=args.url, headers=headers, timeout=30)
    started = time.monotonic()
    deadline = started + 60 * args.minutes
    threads = [threading.Thread(target=worker, args=(args, i, deadline, stop, tally))
               for i in range(args.streams)]
    for thread in threads:
        thread.start()
    time.sleep(min(60 * args.warmup_minutes, 60 * args.minutes))
    rss_start = rss_bytes(args.pid)
    if args.sigterm_after is not None and args.pid is not None:
        time.sleep(max(0.0, args.sigterm_after - (time.monotonic() - started)))
        stop.set()
        os.kill(args.pid, signal.SIGTERM)
    for thread in threads:
        thread.join()
    failures = list(tally.failures)
    summary = {"seconds": round(time.monotonic() - started, 1), "counts": dict(tally.counts)}
    if not stop.is_set():
        usage = wait_idle(admin, 60)
        summary["kv_cache_usage_at_end"] = usage
        if usage:
            failures.append(f"KV pages still in use at the end: {usage}")
        rss_end = rss_bytes(args.pid)
        if rss_start and rss_end:
            growth = rss_end / rss_start - 1
            summary["rss_growth"] = round(growth, 4)
            if growth > args.max_rss_growth:
                failures.append(f"RSS grew {100 * growth:.1f}%")
    if args.log is not None and "Traceback" in args.log.read_text(errors="replace"):
        failures.append(f"a traceback in {args.log}")
    for key in ("5xx", "transport error", "wrong token count", "bad input accepted"):
        if tally.counts.get(key):
            failures.append(f"{tally.counts[key]} x {key}")
    summary["failures"] = failures
    print(json.dumps(summary, indent=1))
    print("soak: " + ("FAIL" if failures else "pass"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
