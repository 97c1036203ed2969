"""The lookup workload of bench_serving (stdlib code to rewrite), the spec-decode acceptance it
reads from /metrics, and compare_peers' speculative peers."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.support.configs import ROOT
from tests.support.raw_tokenizer import RawTokenizer

sys.path.insert(0, str(ROOT / "scripts"))
import bench_serving as bs


def test_lookup_prompts_are_stdlib_code_within_input_len_and_fixed_by_the_seed(tiny_model_dir):
    import sysconfig

    import lookup_workload as lw

    tokenizer = RawTokenizer(tiny_model_dir / "tokenizer.json")
    prompts = lw.lookup_prompts(tokenizer, 6, 300, seed=3)
    assert prompts == lw.lookup_prompts(tokenizer, 6, 300, seed=3)
    assert prompts != lw.lookup_prompts(tokenizer, 6, 300, seed=4)
    assert len({text for text, _ in prompts}) == 6
    warmups = lw.lookup_prompts(tokenizer, 6, 300, seed=3, warmup=True)
    assert not {text for text, _ in warmups} & {text for text, _ in prompts}
    stdlib = "".join(p.read_text() for p in Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    for text, ids in prompts:
        assert text.startswith(lw.INSTRUCTION) and text.endswith(lw.ANSWER)
        assert ids == tokenizer.encode(text) and len(ids) <= 300
        code = text[len(lw.INSTRUCTION):-len(lw.ANSWER)]
        assert code.endswith("\n") and code.startswith(("def ", "class ", "async def ", "@"))
        assert all(line.strip() in stdlib for line in code.splitlines())
        # the longest whole-line head of one stdlib definition that fits
        snippet = next(s for s in lw.code_snippets() if s.startswith(code))
        assert 40 <= len(snippet.splitlines()) <= 120
        if code != snippet:
            longer = code + snippet[len(code):].split("\n", 1)[0] + "\n"
            assert len(tokenizer.encode(lw.INSTRUCTION + longer + lw.ANSWER)) > 300
    args = bs.parser().parse_args(["--dataset", "lookup", "--input-len", "300",
                                   "--prompt-format", "ids"])
    as_ids = bs.make_prompts(tokenizer, args, 6, seed=3)
    assert [(p.prompt, p.num_tokens) for p in as_ids] == [(ids, len(ids)) for _, ids in prompts]
    assert bs.parser().parse_args([]).dataset == "random"


def spec_metrics(prefix: str, drafts: float, draft_tokens: float, accepted: float) -> str:
    """A /metrics text as vLLM writes it: each counter under two engine labels (halves)."""
    lines = []
    for name, value in (("num_drafts", drafts), ("num_draft_tokens", draft_tokens),
                        ("num_accepted_tokens", accepted)):
        family = f"{prefix}spec_decode_{name}"
        lines += [f"# HELP {family}_total x", f"# TYPE {family}_total counter",
                  *(f'{family}_total{{engine="{e}",model_name="m"}} {value / 2}' for e in (0, 1)),
                  f"# TYPE {family}_created gauge",
                  f'{family}_created{{engine="0",model_name="m"}} 1.7e9']
    return "\n".join(["# TYPE other_total counter", "other_total 5.0", *lines]) + "\n"


@pytest.mark.parametrize("prefix", ["jaxserve:", "vllm:"])
def test_spec_decode_acceptance_is_the_counters_delta(prefix):
    from lookup_workload import acceptance

    before = spec_metrics(prefix, drafts=10, draft_tokens=40, accepted=20)
    after = spec_metrics(prefix, drafts=30, draft_tokens=120, accepted=80)
    got = acceptance(before, after)
    # 60 of 80 drafted tokens accepted over 20 drafts: 0.75, and 1 + 60/20 tokens a step
    assert got["acceptance_rate"] == pytest.approx(0.75)
    assert got["mean_accepted_length"] == pytest.approx(4.0)
    assert (got["num_drafts"], got["num_draft_tokens"], got["num_accepted_tokens"]) == (20, 80, 60)
    assert acceptance(before, before)["acceptance_rate"] is None  # no drafts in between
    no_spec = "# TYPE other_total counter\nother_total 5.0\n"
    assert set(acceptance(no_spec, no_spec).values()) == {None}
    assert acceptance(None, after)["mean_accepted_length"] is None  # no /metrics (llama.cpp)


def test_a_level_scrapes_metrics_around_its_requests_not_its_warmups():
    texts = iter([spec_metrics("vllm:", 0, 0, 0), spec_metrics("vllm:", 4, 16, 8)])
    sent = []

    async def send(prompt):
        sent.append(prompt)
        return bs.RequestResult(ok=True, prompt_tokens=prompt.num_tokens, output_tokens=4,
                                ttft=0.01, e2e=0.04)

    async def scrape():
        return next(texts)

    prompts = [bs.Prompt("a", 10), bs.Prompt("b", 20)]
    level = asyncio.run(bs.run_level(send, prompts, [bs.Prompt("w", 1)], concurrency=1,
                                     rate=None, max_duration=20, seed=0, progress=False,
                                     scrape=scrape))
    assert len(sent) == 3 and level["completed"] == 2
    assert level["mean_input_tokens"] == 15 and level["mean_output_tokens"] == 4
    assert level["acceptance_rate"] == 0.5 and level["mean_accepted_length"] == 3.0


def test_compare_peers_has_the_speculative_peers_and_the_lookup_workload(tmp_path):
    import json as json_

    import compare_peers
    from peers.report import TITLES, write_report
    from peers.servers import GGUF_Q4_1, NGRAM, is_ours, server_specs

    lookup = next(w for w in compare_peers.WORKLOADS if w.name == "lookup c=1")
    assert (lookup.dataset, lookup.concurrency, lookup.input_len, lookup.output_len) == (
        "lookup", 1, 1024, 128)
    assert {"c=1", "c=4", "c=16"} <= {w.name for w in compare_peers.WORKLOADS}
    specs = server_specs(tmp_path, 8000)
    for name in ("jaxserve-ngram", "vllm-ngram", "llamacpp-q4_1-lookup"):
        assert specs[name].name == name and name in TITLES
    for name in ("jaxserve-ngram", "vllm-ngram"):
        argv = specs[name].argv
        assert json_.loads(argv[argv.index("--speculative-config") + 1]) == NGRAM
        assert argv[:-2] == specs[name.removesuffix("-ngram")].argv
    lookup_argv = specs["llamacpp-q4_1-lookup"].argv
    assert str(GGUF_Q4_1) in lookup_argv and specs["llamacpp-q4_1-lookup"].bench_args == [
        "--eos-bias"]
    assert lookup_argv[lookup_argv.index("--draft_model") + 1] == "prompt-lookup-decoding"
    assert is_ours("jaxserve-ngram") and not is_ours("vllm-ngram")
    assert compare_peers.parser().parse_args(
        ["--servers", "jaxserve-ngram,vllm-ngram,llamacpp-q4_1-lookup"]).servers

    def level(out_tps, rate=None, length=None, dataset="random"):
        return {"concurrency": 1, "completed": 8, "failed": 0, "output_throughput": out_tps,
                "total_token_throughput": out_tps, "p50_ttft_ms": 100.0, "p50_tpot_ms": 10.0,
                "mean_input_tokens": 900.0, "mean_output_tokens": 128.0, "dataset": dataset,
                "acceptance_rate": rate, "mean_accepted_length": length,
                "loadavg_after": [1.0] * 3}

    refusal = compare_peers._last_error([
        "Traceback (most recent call last):", '  File "x.py", line 1',
        "ValueError: speculative decoding is not supported on CPU", "",
        "RuntimeError: Engine core initialization failed. See root cause above."])
    assert refusal == "ValueError: speculative decoding is not supported on CPU"
    assert compare_peers._last_error(["pydantic_core.ValidationError: 1 validation error",
                                      "  Value error, no ngram here", "INFO bye"]) == (
        "pydantic_core.ValidationError: 1 validation error / Value error, no ngram here / INFO bye")
    run = {"date": "d", "nproc": 2, "cpu": "cpu", "cpu_flags": ["avx2"],
           "loadavg_start": [1.0] * 3, "loadavg_end": [1.0] * 3,
           "workloads": ["c=1", "lookup c=1"],
           "servers": {
               "jaxserve-ngram": {"note": "n", "ready_s": 5.0, "peak_rss": 2**30,
                                  "workloads": {"c=1": level(50.0, 0.1, 1.4),
                                                "lookup c=1": level(80.0, 0.6, 3.4, "lookup")}},
               "vllm-ngram": {"note": "n", "ready_s": None, "error": f"exited: {refusal}",
                              "workloads": {}},
               "llamacpp-q4_1-lookup": {
                   "note": "n", "ready_s": 1.0, "peak_rss": 2**29,
                   "workloads": {"c=1": level(60.0), "lookup c=1": level(40.0, dataset="lookup")}}}}
    doc = tmp_path / "performance.md"
    write_report(run, doc, tmp_path)
    lines = doc.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| workload |"))
    assert "jaxserve, n-gram speculative" in header and "llama.cpp Q4_1, prompt lookup" in header
    row = next(line for line in lines if line.startswith("| lookup c=1 |"))
    assert "80.0 tok/s (acceptance 60%, mean accepted length 3.40)" in row
    assert "**2.00×** (vs llama.cpp Q4_1, prompt lookup)" in row
    ready = next(line for line in lines if line.startswith("| start to ready"))
    assert "not supported on CPU" in ready
    assert "flags: avx2" in "\n".join(lines)
    raw = (tmp_path / "raw.md").read_text().splitlines()
    assert any(line.startswith("| acceptance_rate | 0.100 | 0.600 |") for line in raw)
    assert any(line.startswith("| acceptance_rate | n/a | n/a |") for line in raw)
    assert any(line.startswith("| mean_input_tokens | 900.0 |") for line in raw)
    assert "No workload ran: exited: ValueError" in "\n".join(raw)
