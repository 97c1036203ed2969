"""An LLMEngine on the fake runner with small pages and budgets, and a loop that runs it dry."""

from __future__ import annotations

from jaxserve.config import load_config
from jaxserve.engine.llm_engine import LLMEngine
from jaxserve.sampling_params import SamplingParams
from tests.support.fake_runner import FakeRunner

EOS = 2


def make_engine(tokenizer, **overrides) -> LLMEngine:
    """Pages of 4 tokens (64 of them), 4 sequences and 16 tokens a step, a 128-token context."""
    base = {"cache.page_size": 4, "cache.num_pages": 64, "scheduler.max_num_seqs": 4,
            "scheduler.max_num_batched_tokens": 16, "scheduler.token_buckets": [8, 16],
            "scheduler.seq_buckets": [4]}
    config = load_config(None, base | overrides)
    return LLMEngine(config, FakeRunner(), tokenizer, max_model_len=128, vocab_size=259,
                     eos_token_ids=(EOS,))


def add(engine: LLMEngine, request_id: str, prompt: list[int], params: SamplingParams) -> None:
    """Admit on this thread, then add: the two steps a caller of the engine takes."""
    engine.add_request(request_id, engine.admission.admit(prompt, params))


def run_all(engine: LLMEngine, earlier: list | None = None) -> dict[str, list[list[int]]]:
    """Step until done; returns each request's tokens per sample (earlier: outputs already seen)."""
    tokens: dict[str, dict[int, list[int]]] = {}
    outputs = list(earlier or [])
    for _ in range(1000):
        if not engine.has_unfinished_requests():
            break
        outputs += engine.step()
    for out in outputs:
        for c in out.outputs:
            tokens.setdefault(out.request_id, {}).setdefault(c.index, []).extend(c.token_ids)
    assert not engine.has_unfinished_requests()
    return {rid: [by_index[i] for i in sorted(by_index)] for rid, by_index in tokens.items()}
