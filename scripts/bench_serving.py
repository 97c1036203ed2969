"""Load generator for any OpenAI-compatible server: jaxserve, vLLM, llama.cpp, ...

The workload is the one `vllm bench serve --dataset-name random` sends to a vLLM server: streamed
``POST /v1/completions`` (``stream: true``, usage in the last chunk) with random-token prompts of
a fixed input length, a fixed output length (``ignore_eos``, or ``logit_bias`` -100 on the eos ids
for servers that ignore ``ignore_eos``) and temperature 0. Requests run in a closed loop at each
concurrency of a sweep, or arrive as a Poisson process at ``--request-rate``.

``--dataset lookup`` sends instead Python stdlib functions to rewrite with type hints, at most
``--input-len`` tokens each (scripts/lookup_workload.py): answers that copy the prompt, for n-gram
(prompt lookup) speculative decoding. Where the server exports the spec-decode counters on
``/metrics`` (jaxserve: or vllm:), each level also reports their acceptance rate and mean
accepted length between its first and last request.

    python scripts/bench_serving.py --base-url http://127.0.0.1:8000 --concurrency 1,4,16 \
        --input-len 128 --output-len 128 --num-prompts 32 --result-json out.json
    python scripts/bench_serving.py --dataset lookup --input-len 1024 --output-len 128

Metrics are defined as vllm bench serve defines them:
  TTFT  time from sending a request to its first streamed chunk with choices;
  ITL   every gap between two consecutive such chunks of a request;
  E2E   time from sending to the last such chunk;
  TPOT  (E2E - TTFT) / (output_tokens - 1), per request with more than one output token;
  tok/s tokens of completed requests over the wall time of the whole run at that load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from lookup_workload import acceptance, lookup_prompts, scrape_metrics

DEFAULT_MODEL = "smollm2-135m-instruct"
PERCENTILES = (50, 99)


@dataclass
class Prompt:
    prompt: str | list[int]  # text (as vllm bench serve sends) or token ids
    num_tokens: int  # length under the model's tokenizer


@dataclass
class RequestResult:
    ok: bool = False
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0  # s
    e2e: float = 0.0  # s
    itl: list[float] = field(default_factory=list)  # s, one per chunk after the first
    error: str = ""


Send = Callable[[Prompt], Awaitable[RequestResult]]


# ---- workload ----------------------------------------------------------------------------------


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    from jaxserve.pull import resolve_model

    return AutoTokenizer.from_pretrained(str(resolve_model(name_or_path)))


def eos_token_ids(tokenizer) -> list[int]:
    """Every id that can end a reply: the tokenizer's eos plus the model's generation config."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config_file = Path(getattr(tokenizer, "name_or_path", "")) / "generation_config.json"
    if config_file.is_file():
        eos = json.loads(config_file.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return sorted(ids)


def random_prompts(tokenizer, n: int, input_len: int, seed: int, as_text: bool = True
                   ) -> list[Prompt]:
    """n prompts of random ordinary tokens whose text re-tokenizes to exactly input_len tokens.

    Text is what vllm bench serve sends; a decoded run of random ids re-tokenizes to a different
    count, so the ids are topped up or cut until the round trip is exact (a few rounds at most).
    """
    rng = np.random.default_rng(seed)
    ordinary = ordinary_token_ids(tokenizer)
    prompts = []
    for _ in range(n):
        ids = rng.choice(ordinary, input_len).tolist()
        if not as_text:
            prompts.append(Prompt(ids, input_len))
            continue
        best = None
        for _round in range(20):
            text = tokenizer.decode(ids)
            ids = tokenizer.encode(text, add_special_tokens=False)
            if best is None or abs(len(ids) - input_len) < abs(best.num_tokens - input_len):
                best = Prompt(text, len(ids))
            if len(ids) == input_len:
                break
            ids = ids[:input_len] + rng.choice(ordinary, max(0, input_len - len(ids))).tolist()
        prompts.append(best)  # exact in practice; else the closest, with its true length
    return prompts


def ordinary_token_ids(tokenizer) -> np.ndarray:
    """Ids that are neither special nor a fragment of a UTF-8 character (whose decoded text
    re-tokenizes to something else, so the round trip above would never settle)."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return np.array([i for i in range(len(tokenizer))
                     if i not in special and "\ufffd" not in tokenizer.decode([i])])


def make_prompts(tokenizer, args: argparse.Namespace, n: int, seed: int, warmup: bool = False
                 ) -> list[Prompt]:
    as_text = args.prompt_format == "text"
    if args.dataset == "random":
        return random_prompts(tokenizer, n, args.input_len, seed + 999 * warmup, as_text)
    return [Prompt(text if as_text else ids, len(ids))
            for text, ids in lookup_prompts(tokenizer, n, args.input_len, seed, warmup)]


def request_body(args: argparse.Namespace, prompt: Prompt, eos_ids: list[int]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": args.model, "prompt": prompt.prompt, "max_tokens": args.output_len,
        "temperature": args.temperature, "stream": True, "stream_options": {"include_usage": True},
    }
    if args.eos_bias:  # for servers that ignore ignore_eos (llama.cpp): eos can never win
        body["logit_bias"] = {str(i): -100 for i in eos_ids}
    else:
        body["ignore_eos"] = True
    return body


# ---- one streamed request ----------------------------------------------------------------------


async def stream_completion(client, url: str, body: dict[str, Any], prompt_tokens: int,
                            headers: dict[str, str] | None = None) -> RequestResult:
    """Send one streamed completion and time its chunks."""
    result = RequestResult(prompt_tokens=prompt_tokens)
    usage_tokens, finish_reason, text = None, None, []
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments and pings
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("choices"):
                    now = time.perf_counter()
                    if result.ttft == 0.0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                    choice = chunk["choices"][0]
                    text.append(choice.get("text") or "")
                    finish_reason = choice.get("finish_reason") or finish_reason
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens")
    except (httpx.HTTPError, OSError, ValueError) as exc:  # fails this request, not the run
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    if result.ttft == 0.0:
        result.error = "no chunk with choices"
        return result
    result.ok, result.e2e = True, last - start
    if usage_tokens is not None:
        result.output_tokens = usage_tokens
    elif finish_reason == "length":  # no usage sent (llama.cpp): it stopped at max_tokens
        result.output_tokens = body["max_tokens"]
    else:
        result.output_tokens = len(text)  # a rough fallback: one token per chunk
    return result


# ---- load patterns -----------------------------------------------------------------------------


async def closed_loop(send: Send, prompts: list[Prompt], concurrency: int, deadline: float,
                      on_done: Callable[[], None] = lambda: None) -> list[RequestResult]:
    """Keep `concurrency` requests in flight until the prompts run out or the deadline passes."""
    queue = list(reversed(prompts))
    results: list[RequestResult] = []

    async def worker() -> None:
        while queue and time.perf_counter() < deadline:
            results.append(await send(queue.pop()))
            on_done()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prompts)))))
    return results


async def poisson(send: Send, prompts: list[Prompt], rate: float, deadline: float, seed: int,
                  max_concurrency: int | None = None, on_done: Callable[[], None] = lambda: None
                  ) -> list[RequestResult]:
    """Requests arrive with exponential gaps of mean 1/rate, each sent at once (open loop)."""
    rng = random.Random(seed)
    limit = asyncio.Semaphore(max_concurrency or len(prompts) or 1)
    results: list[RequestResult] = []

    async def one(prompt: Prompt) -> None:
        async with limit:
            results.append(await send(prompt))
        on_done()

    tasks = []
    for prompt in prompts:
        if time.perf_counter() >= deadline:
            break
        tasks.append(asyncio.create_task(one(prompt)))
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*tasks)
    return results


# ---- metrics -----------------------------------------------------------------------------------


def summarize(results: list[RequestResult], duration: float) -> dict[str, Any]:
    """vllm bench serve's figures for one load level; latencies in ms."""
    done = [r for r in results if r.ok]
    input_tokens = sum(r.prompt_tokens for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    out: dict[str, Any] = {
        "completed": len(done), "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "duration_s": duration, "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "mean_input_tokens": input_tokens / len(done) if done else math.nan,
        "mean_output_tokens": output_tokens / len(done) if done else math.nan,
        "request_throughput": len(done) / duration if duration else 0.0,
        "output_throughput": output_tokens / duration if duration else 0.0,
        "total_token_throughput": (input_tokens + output_tokens) / duration if duration else 0.0,
    }
    series = {
        "ttft": [r.ttft for r in done],
        "tpot": [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1],
        "itl": [gap for r in done for gap in r.itl],
        "e2el": [r.e2e for r in done],
    }
    for name, values in series.items():
        ms = np.asarray(values, dtype=float) * 1000.0
        out[f"mean_{name}_ms"] = float(ms.mean()) if ms.size else math.nan
        for p in PERCENTILES:
            out[f"p{p}_{name}_ms"] = float(np.percentile(ms, p)) if ms.size else math.nan
    return out


async def run_level(send: Send, prompts: list[Prompt], warmups: list[Prompt], *,
                    concurrency: int | None, rate: float | None, max_duration: float, seed: int,
                    progress: bool = True,
                    scrape: Callable[[], Awaitable[str | None]] | None = None) -> dict[str, Any]:
    """Warm up, then measure one concurrency (closed loop) or one request rate (Poisson);
    `scrape` reads /metrics around the measured requests (not the warm-ups)."""
    from tqdm import tqdm

    label = f"c={concurrency}" if rate is None else f"rate={rate}/s"
    if warmups:
        await closed_loop(send, warmups, concurrency or 1, time.perf_counter() + max_duration)
    metrics_before = await scrape() if scrape else None
    bar = tqdm(total=len(prompts), desc=label, disable=not progress, file=sys.stderr)
    start = time.perf_counter()
    deadline = start + max_duration
    if rate is None:
        results = await closed_loop(send, prompts, concurrency, deadline, lambda: bar.update())
    else:
        results = await poisson(send, prompts, rate, deadline, seed, concurrency,
                                lambda: bar.update())
    duration = time.perf_counter() - start
    bar.close()
    metrics_after = await scrape() if scrape else None
    return {"concurrency": concurrency, "request_rate": rate, **summarize(results, duration),
            **acceptance(metrics_before, metrics_after)}


# ---- reporting ---------------------------------------------------------------------------------


def print_level(level: dict[str, Any]) -> None:
    print(f"{'concurrency' if level['request_rate'] is None else 'request rate'}: "
          f"{level['concurrency'] if level['request_rate'] is None else level['request_rate']}  "
          f"completed {level['completed']}, failed {level['failed']} in {level['duration_s']:.1f} s")
    print(f"  output {level['output_throughput']:.1f} tok/s, total "
          f"{level['total_token_throughput']:.1f} tok/s, {level['request_throughput']:.2f} req/s")
    print(f"  tokens per request: {level['mean_input_tokens']:.1f} in, "
          f"{level['mean_output_tokens']:.1f} out")
    if level.get("acceptance_rate") is not None:
        print(f"  spec decode: acceptance rate {level['acceptance_rate']:.3f}, mean accepted "
              f"length {level['mean_accepted_length']:.2f}")
    for name in ("ttft", "tpot", "itl", "e2el"):
        print(f"  {name.upper():5s} ms  mean {level[f'mean_{name}_ms']:9.1f}"
              + "".join(f"  p{p} {level[f'p{p}_{name}_ms']:9.1f}" for p in PERCENTILES))
    for error in level["errors"]:
        print(f"  error: {error}")


def plot(levels: list[dict[str, Any]], path: Path, title: str) -> None:
    """Throughput against concurrency (or rate), and latency percentiles, in one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("warning: matplotlib is not installed, so no PNG (pip install matplotlib)",
              file=sys.stderr)
        return
    xs = [lv["concurrency"] if lv["request_rate"] is None else lv["request_rate"] for lv in levels]
    xlabel = "concurrency" if levels[0]["request_rate"] is None else "request rate (req/s)"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(xs, [lv["output_throughput"] for lv in levels], "o-", label="output tok/s")
    left.plot(xs, [lv["total_token_throughput"] for lv in levels], "s--", label="total tok/s")
    left.set(xlabel=xlabel, ylabel="tokens / s", title="throughput")
    for name, colour in (("ttft", "C0"), ("tpot", "C1"), ("e2el", "C2")):
        for p, style in zip(PERCENTILES, ("o-", "x:")):
            right.plot(xs, [lv[f"p{p}_{name}_ms"] for lv in levels], style, color=colour,
                       label=f"{name.upper()} p{p}")
    right.set(xlabel=xlabel, ylabel="ms", title="latency", yscale="log")
    for ax in (left, right):
        if len(xs) > 1 and xlabel == "concurrency":
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- command line ------------------------------------------------------------------------------


def int_list(text: str, minimum: int = 1) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < minimum:
        kind = "positive integers like 1,4,16" if minimum == 1 else f"integers >= {minimum}"
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--endpoint", default="/v1/completions")
    p.add_argument("--model", default=DEFAULT_MODEL, help="the served model name")
    p.add_argument("--tokenizer", default=DEFAULT_MODEL,
                   help="HF folder or known jaxserve model name (default: %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    p.add_argument("--dataset", choices=("random", "lookup"), default="random",
                   help="random tokens of exactly --input-len, or stdlib code to rewrite, at "
                        "most --input-len tokens (for prompt lookup decoding)")
    p.add_argument("--metrics-url", default=None,
                   help="Prometheus text to read spec-decode counters from (default: "
                        "BASE_URL/metrics; '' for none)")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--num-prompts", type=int, default=32, help="per load level")
    p.add_argument("--concurrency", type=int_list, default=[1],
                   help="closed-loop sweep, e.g. 1,4,16; with --request-rate, a cap on in-flight")
    p.add_argument("--request-rate", type=float, default=None,
                   help="Poisson arrivals per second instead of a closed loop")
    p.add_argument("--num-warmups", type=int, default=None,
                   help="warm-up requests before each level (default: its concurrency)")
    p.add_argument("--max-duration", type=float, default=300.0,
                   help="stop sending after this many seconds per level")
    p.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    p.add_argument("--eos-bias", action="store_true",
                   help="send logit_bias -100 on eos ids instead of ignore_eos (llama.cpp)")
    p.add_argument("--prompt-format", choices=("text", "ids"), default="text",
                   help="text as vllm bench serve sends, or token ids")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="1.0: sampled outputs, which rarely repeat themselves as greedy ones do")
    p.add_argument("--label", default="", help="a name for this server in the result")
    p.add_argument("--result-json", type=Path)
    p.add_argument("--plot", type=Path, help="PNG path (default: beside --result-json)")
    p.add_argument("--no-progress", action="store_true")
    return p


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    tokenizer = load_tokenizer(args.tokenizer)
    eos_ids = eos_token_ids(tokenizer)
    url = args.base_url.rstrip("/") + args.endpoint
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    metrics_url = (args.base_url.rstrip("/") + "/metrics" if args.metrics_url is None
                   else args.metrics_url)
    rates = [args.request_rate] if args.request_rate is not None else [None] * len(args.concurrency)
    caps = args.concurrency if args.request_rate is None else [args.concurrency[0]]
    levels = []
    limits = httpx.Limits(max_connections=max(caps) + 4, max_keepalive_connections=max(caps) + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout), limits=limits) as client:

        async def send(prompt: Prompt) -> RequestResult:
            body = request_body(args, prompt, eos_ids)
            return await stream_completion(client, url, body, prompt.num_tokens, headers)

        async def scrape() -> str | None:
            return await scrape_metrics(client, metrics_url, headers)

        for i, (concurrency, rate) in enumerate(zip(caps, rates)):
            seed = args.seed + 1000 * i
            num_warmups = concurrency if args.num_warmups is None else args.num_warmups
            warmups = make_prompts(tokenizer, args, num_warmups, seed, warmup=True)
            prompts = make_prompts(tokenizer, args, args.num_prompts, seed)
            level = await run_level(send, prompts, warmups, concurrency=concurrency, rate=rate,
                                    max_duration=args.max_duration, seed=seed,
                                    progress=not args.no_progress,
                                    scrape=scrape if metrics_url else None)
            print_level(level)
            levels.append(level)
    return {
        "label": args.label, "base_url": args.base_url, "endpoint": args.endpoint,
        "model": args.model, "dataset": args.dataset, "input_len": args.input_len,
        "output_len": args.output_len,
        "num_prompts": args.num_prompts, "prompt_format": args.prompt_format,
        "eos_bias": args.eos_bias, "loadavg_start": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "levels": levels,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    result = asyncio.run(bench(args))
    result["loadavg_end"] = list(os.getloadavg())
    if args.result_json:
        args.result_json.parent.mkdir(parents=True, exist_ok=True)
        args.result_json.write_text(json.dumps(result, indent=1))
    png = args.plot or (args.result_json.with_suffix(".png") if args.result_json else None)
    if png:
        plot(result["levels"], png, f"{args.label or args.base_url}: {args.input_len} in / "
                                    f"{args.output_len} out")
    return result


if __name__ == "__main__":
    main()
