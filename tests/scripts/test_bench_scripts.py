"""bench_serving.py against an in-process fake OpenAI streaming server with known delays.

The fake sends its first chunk TTFT_S after the request and each later one ITL_S after the
previous, so the measured TTFT, ITL, TPOT and E2E have known lower bounds and, on an idle
event loop, sit just above them. The metrics math is also checked on hand-made results.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys

import httpx
import pytest

from tests.support.configs import ROOT
from tests.support.raw_tokenizer import RawTokenizer

sys.path.insert(0, str(ROOT / "scripts"))
import bench_serving as bs

TTFT_S, ITL_S, NUM_TOKENS = 0.20, 0.05, 5
SLACK_S = 0.15  # scheduling noise allowed on a loaded 2-core machine


async def fake_completions(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           *, send_usage: bool, seen: list[dict]) -> None:
    """One POST /v1/completions answered as an SSE stream; the connection closes after it."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    body = json.loads(await reader.readexactly(length))
    seen.append(body)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
    for i in range(body["max_tokens"]):
        await asyncio.sleep(TTFT_S if i == 0 else ITL_S)
        last = i == body["max_tokens"] - 1
        choice = {"index": 0, "text": f"t{i}", "finish_reason": "length" if last else None}
        writer.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        await writer.drain()
    if send_usage:
        usage = {"prompt_tokens": 3, "completion_tokens": body["max_tokens"]}
        writer.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
    writer.write(b"data: [DONE]\n\n")
    await writer.drain()
    writer.close()


async def bench_fake(argv: list[str], send_usage: bool = True) -> tuple[dict, list[dict]]:
    seen: list[dict] = []

    async def handle(reader, writer):
        await fake_completions(reader, writer, send_usage=send_usage, seen=seen)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    args = bs.parser().parse_args(["--base-url", f"http://127.0.0.1:{port}", *argv])
    prompts = [bs.Prompt("a b c", 3)] * args.num_prompts
    async with server, httpx.AsyncClient(timeout=10) as client:
        url = args.base_url + args.endpoint

        async def send(prompt):
            return await bs.stream_completion(client, url, bs.request_body(args, prompt, [2, 0]),
                                              prompt.num_tokens)

        level = await bs.run_level(send, prompts, [], concurrency=args.concurrency[0],
                                   rate=args.request_rate, max_duration=20, seed=0,
                                   progress=False)
    return level, seen


def test_known_delays_give_known_ttft_itl_tpot_e2e():
    level, seen = asyncio.run(bench_fake(["--concurrency", "2", "--num-prompts", "4",
                                          "--output-len", str(NUM_TOKENS)]))
    assert level["completed"] == 4 and level["failed"] == 0
    assert level["total_output_tokens"] == 4 * NUM_TOKENS
    assert level["total_input_tokens"] == 4 * 3
    for p in ("p50", "p99"):
        assert TTFT_S * 1000 <= level[f"{p}_ttft_ms"] < (TTFT_S + SLACK_S) * 1000
        assert ITL_S * 1000 * 0.9 <= level[f"{p}_itl_ms"] < (ITL_S + SLACK_S) * 1000
        assert ITL_S * 1000 <= level[f"{p}_tpot_ms"] < (ITL_S + SLACK_S) * 1000
    e2e = TTFT_S + (NUM_TOKENS - 1) * ITL_S
    assert e2e * 1000 <= level["p50_e2el_ms"] < (e2e + SLACK_S) * 1000
    # two waves of two concurrent requests: about 2 * e2e of wall time
    assert 2 * e2e <= level["duration_s"] < 2 * e2e + 2 * SLACK_S
    assert level["output_throughput"] == pytest.approx(
        level["total_output_tokens"] / level["duration_s"])
    body = seen[0]
    assert body["stream"] and body["temperature"] == 0.0 and body["ignore_eos"] is True
    assert body["stream_options"] == {"include_usage": True} and "logit_bias" not in body


def test_eos_bias_and_no_usage_count_max_tokens():
    """llama.cpp's way: logit_bias on eos instead of ignore_eos, and no usage chunk."""
    level, seen = asyncio.run(bench_fake(["--num-prompts", "1", "--output-len", "3",
                                          "--eos-bias"], send_usage=False))
    assert level["completed"] == 1 and level["total_output_tokens"] == 3
    assert seen[0]["logit_bias"] == {"2": -100, "0": -100} and "ignore_eos" not in seen[0]


def test_poisson_rate_sends_every_prompt():
    level, seen = asyncio.run(bench_fake(["--request-rate", "50", "--num-prompts", "3",
                                          "--output-len", "2"]))
    assert level["completed"] == 3 and level["request_rate"] == 50 and len(seen) == 3


def test_http_error_fails_the_request_not_the_run():
    async def run():
        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n"
                         b"Connection: close\r\n\r\n{}")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, httpx.AsyncClient(timeout=5) as client:
            return await bs.stream_completion(client, f"http://127.0.0.1:{port}/v1/completions",
                                              {"max_tokens": 1}, 1)

    result = asyncio.run(run())
    assert not result.ok and result.error.startswith("HTTP 404")
    level = bs.summarize([result], 1.0)
    assert level["completed"] == 0 and level["failed"] == 1 and math.isnan(level["p50_ttft_ms"])


def test_summarize_matches_vllm_definitions():
    results = [
        bs.RequestResult(ok=True, prompt_tokens=10, output_tokens=3, ttft=0.1, e2e=0.5,
                         itl=[0.2, 0.2]),
        bs.RequestResult(ok=True, prompt_tokens=10, output_tokens=5, ttft=0.3, e2e=0.7,
                         itl=[0.1] * 4),
        bs.RequestResult(ok=True, prompt_tokens=10, output_tokens=1, ttft=0.2, e2e=0.2),
        bs.RequestResult(ok=False, prompt_tokens=10, error="boom"),
    ]
    level = bs.summarize(results, duration=2.0)
    assert level["completed"] == 3 and level["failed"] == 1 and level["errors"] == ["boom"]
    assert level["output_throughput"] == pytest.approx(9 / 2.0)
    assert level["total_token_throughput"] == pytest.approx((30 + 9) / 2.0)
    assert level["request_throughput"] == pytest.approx(1.5)
    # TPOT skips one-token requests: (0.5-0.1)/2 = 200 ms and (0.7-0.3)/4 = 100 ms
    assert level["mean_tpot_ms"] == pytest.approx(150.0)
    assert level["p50_tpot_ms"] == pytest.approx(150.0)
    assert level["p99_tpot_ms"] == pytest.approx(100 + 0.99 * 100)
    assert level["mean_itl_ms"] == pytest.approx((0.4 + 0.4) / 6 * 1000)
    assert level["p50_ttft_ms"] == pytest.approx(200.0)
    assert level["p50_e2el_ms"] == pytest.approx(500.0)


def test_argument_parsing():
    args = bs.parser().parse_args([])
    assert args.concurrency == [1] and args.request_rate is None and not args.eos_bias
    assert (args.input_len, args.output_len, args.prompt_format) == (128, 128, "text")
    args = bs.parser().parse_args(["--concurrency", "1,4,16", "--request-rate", "2.5",
                                   "--eos-bias", "--prompt-format", "ids"])
    assert args.concurrency == [1, 4, 16] and args.request_rate == 2.5 and args.eos_bias
    for bad in ("0", "1,x", ""):
        with pytest.raises(SystemExit):
            bs.parser().parse_args(["--concurrency", bad])


def test_random_prompts_have_the_exact_token_count(tiny_model_dir):
    tokenizer = RawTokenizer(tiny_model_dir / "tokenizer.json")
    assert tokenizer.all_special_ids
    for as_text in (True, False):
        prompts = bs.random_prompts(tokenizer, 4, 32, seed=1, as_text=as_text)
        assert len({str(p.prompt) for p in prompts}) == 4
        for p in prompts:
            ids = tokenizer.encode(p.prompt) if as_text else p.prompt
            assert len(ids) == p.num_tokens == 32
            assert not set(ids) & set(tokenizer.all_special_ids)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    levels = [{"concurrency": c, "request_rate": None, "output_throughput": 10.0 * c,
               "total_token_throughput": 20.0 * c,
               **{f"p{p}_{m}_ms": float(c * p) for p in (50, 99)
                  for m in ("ttft", "tpot", "e2el")}} for c in (1, 4, 16)]
    bs.plot(levels, tmp_path / "x.png", "fake")
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_ratios_pick_the_best_peer(tmp_path):
    from peers.report import BEGIN, END, write_report

    def level(out_tps):
        return {"concurrency": 1, "completed": 4, "failed": 0, "output_throughput": out_tps,
                "total_token_throughput": 2 * out_tps, "p50_ttft_ms": 100.0,
                "p50_tpot_ms": 10.0, "loadavg_after": [2.0, 2.0, 2.0]}

    def server(out_tps, ready, rss):
        return {"note": "n", "ready_s": ready, "peak_rss": rss, "peak_pss": rss,
                "workloads": {"c=1": level(out_tps)}}

    run = {"date": "d", "nproc": 2, "cpu": "cpu", "loadavg_start": [2.0, 2.0, 2.0],
           "loadavg_end": [2.5, 2.0, 2.0], "workloads": ["c=1"],
           "servers": {"jaxserve": server(90.0, 10.0, 2**30), "vllm": server(60.0, 40.0, 2**32),
                       "llamacpp": server(45.0, 0.5, 2**29)}}
    doc = tmp_path / "performance.md"
    doc.write_text(f"# hand-written\n\n{BEGIN}\nold\n{END}\n\ntail\n")
    write_report(run, doc, tmp_path)
    text = doc.read_text()
    assert text.startswith("# hand-written") and text.endswith("tail\n") and "old" not in text
    row = next(line for line in text.splitlines() if line.startswith("| c=1 |"))
    assert "**1.50×** (vs vLLM CPU)" in row  # 90 / max(60, 45)
    ready = next(line for line in text.splitlines() if line.startswith("| start to ready"))
    assert "**20.00×** (vs llama.cpp F32)" in ready  # 10 / min(40, 0.5)
    rss = next(line for line in text.splitlines() if line.startswith("| peak RSS"))
    assert "**2.00×** (vs llama.cpp F32)" in rss and "1.00 GiB" in rss


def test_report_gives_each_jaxserve_variant_its_ratio_and_never_counts_it_as_a_peer(tmp_path):
    from peers.report import write_report

    def server(out_tps):
        return {"note": "n", "ready_s": 1.0, "peak_rss": 2**30, "peak_pss": 2**30,
                "workloads": {"c=1": {"completed": 4, "failed": 0, "output_throughput": out_tps,
                                      "total_token_throughput": out_tps, "p50_ttft_ms": 1.0,
                                      "p50_tpot_ms": 1.0, "loadavg_after": [1.0] * 3}}}

    run = {"date": "d", "nproc": 2, "cpu": "cpu", "loadavg_start": [1.0] * 3,
           "loadavg_end": [1.0] * 3, "workloads": ["c=1"],
           "servers": {"jaxserve": server(120.0), "jaxserve-f32": server(90.0),
                       "vllm": server(60.0)}}
    doc = tmp_path / "performance.md"
    write_report(run, doc, tmp_path)
    lines = doc.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| workload |"))
    assert header.endswith("| jaxserve / best peer | jaxserve, float32 weights and K/V / best peer |")
    row = next(line for line in lines if line.startswith("| c=1 |"))
    # 120 / 60 and 90 / 60: the float32 variant is not the bf16 one's "best peer"
    assert "**2.00×** (vs vLLM CPU)" in row and "**1.50×** (vs vLLM CPU)" in row


def test_attention_ab_runs_both_variants_on_the_tiny_model(tmp_path, tiny_model_dir):
    """A and B are the same CPU backend here: the script must build, run and time both."""
    import os
    import subprocess

    ref = ROOT / "jaxserve" / "kernels" / "ragged_paged_attention" / "cpu_attention.py"
    script = ROOT / "scripts" / "bench_attention_ab.py"
    out = subprocess.run(
        [sys.executable, str(script), str(ref), str(ref), "--config", "configs/tiny.yaml",
         "--cases", "4:2:2:1:20,16:2:1x1@30+1x12@4", "--rounds", "2"],
        check=False, capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "JAXSERVE_COMPILE_CACHE": str(tmp_path), "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [r for r in map(str.split, out.stdout.splitlines()) if len(r) == 5 and ":" in r[0]]
    assert [(r[0], r[1]) for r in rows] == [("4:2", "2x1@20"), ("16:2", "1x1@30+1x12@4")]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)


def test_attention_ab_rejects_a_case_that_does_not_fit():
    import argparse

    import bench_attention_ab as ab

    assert ab.parse_cases("16:4:4:1:192") == [(16, 4, [(4, 1, 192)])]
    assert ab.parse_cases("256:16:2x1@540+1x250@0") == [(256, 16, [(2, 1, 540), (1, 250, 0)])]
    for bad in ("16:4:5:1:192", "16:4:2:16:0", "16:4:4:1", "16:4:0:1:10", "16:4:3x1@9+2x1@9",
                "16:4:1x17@0", "16:4:1x1@", "16:4:0x1@5"):
        with pytest.raises(argparse.ArgumentTypeError):
            ab.parse_cases(bad)


def test_trace_steps_summary_groups_steps_by_bucket_and_kind(tmp_path, capsys):
    """Each step's time is the gap since the previous step; steps group by (bucket, kind,
    decodes) with their count, total and share."""
    import trace_steps

    steps = [({"bucket": [1, 1], "decodes": 1, "prefill": 0}, 0.0),
             ({"bucket": [512, 16], "decodes": 2, "prefill": 506}, 0.25),
             ({"bucket": [4, 4], "decodes": 3, "prefill": 0}, 0.28),
             ({"bucket": [4, 4], "decodes": 3, "prefill": 0}, 0.31)]
    trace = tmp_path / "steps.jsonl"
    trace.write_text("".join(json.dumps({**s, "t": t, "waiting": 0}) + "\n" for s, t in steps))
    trace_steps.summary(str(trace))
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert [r[:4] for r in rows] == [["4:4", "decode", "3", "2"], ["512:16", "prefill", "2", "1"]]
    assert [float(r[5]) for r in rows] == pytest.approx([30.0, 250.0])
    assert [r[6] for r in rows] == ["19.4%", "80.6%"]


def test_compare_peers_records_the_served_dtypes_and_serves_the_shipped_q4_1_gguf(tmp_path):
    import compare_peers
    from peers.report import conditions
    from peers.servers import GGUF_Q4_1, server_specs

    metrics = ['# HELP jaxserve:dtype_info The dtypes served, and why auto chose them.',
               '# TYPE jaxserve:dtype_info gauge',
               'jaxserve:dtype_info{activations="float32",kv_cache="float32",model_name="m",'
               'reason="auto: the CPU has no avx512_bf16 or amx_bf16, so bfloat16 is emulated",'
               'weights="float32"} 1.0']
    dtypes = compare_peers._served_dtypes(metrics)
    assert dtypes == ("weights float32, K/V float32 (auto: the CPU has no avx512_bf16 or "
                      "amx_bf16, so bfloat16 is emulated)")
    assert compare_peers._served_dtypes(["# nothing"]) is None
    run = {"date": "d", "nproc": 2, "cpu": "cpu", "cpu_flags": ["avx2"], "loadavg_start": [1, 1, 1],
           "servers": {"jaxserve": {"dtypes": dtypes}, "vllm": {}}}
    assert f"jaxserve's dtypes: jaxserve: {dtypes}." in conditions(run)
    spec = server_specs(tmp_path, 8000)["llamacpp-q4_1"]
    assert str(GGUF_Q4_1) in spec.argv and "Q4_1" in spec.note
