"""Admission compiles a request's grammar once, on the admitting thread; the engine thread only
walks the constraints that came with the request (fake runner, the tiny model's tokenizer)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from jaxserve.config import load_config
from jaxserve.engine.llm_engine import LLMEngine
from jaxserve.sampling_params import ParamError, SamplingParams, StructuredOutputs
from jaxserve.structured import GrammarBackend, GrammarError
from tests.support.fake_runner import FakeRunner

EOS = 2


@pytest.fixture
def engine(tiny_tokenizer) -> LLMEngine:
    config = load_config(None, {"cache.page_size": 4, "cache.num_pages": 64,
                                "scheduler.max_num_seqs": 4,
                                "scheduler.max_num_batched_tokens": 16,
                                "scheduler.token_buckets": [8, 16], "scheduler.seq_buckets": [4]})
    backend = GrammarBackend(tiny_tokenizer, len(tiny_tokenizer), (EOS,), cache_size=1)
    return LLMEngine(config, FakeRunner(), tiny_tokenizer, max_model_len=128,
                     vocab_size=len(tiny_tokenizer), eos_token_ids=(EOS,),
                     constraint_factory=backend)


def record_compile_threads(backend: GrammarBackend) -> list[str]:
    """The thread of every compile() call, cache hits included."""
    threads: list[str] = []
    compile_ = backend.compile

    def recording(so):
        threads.append(threading.current_thread().name)
        return compile_(so)

    backend.compile = recording
    return threads


def params(regex: str, n: int = 1) -> SamplingParams:
    return SamplingParams(n=n, max_tokens=3, temperature=0,
                          structured_outputs=StructuredOutputs(regex=regex))


def test_one_compilation_per_request_and_none_on_the_engine_thread(engine):
    backend = engine.admission.constraint_factory
    threads = record_compile_threads(backend)
    worker = ThreadPoolExecutor(1, thread_name_prefix="admit")

    def admit(p: SamplingParams):
        return worker.submit(engine.admission.admit, [10, 11], p).result()

    first = admit(params("a+", n=2))
    assert backend.compilations == 1
    again = admit(params("a+"))
    assert backend.compilations == 1  # a cache hit
    admit(params("b+"))  # evicts "a+" (cache_size 1)
    evicted = admit(params("a+"))
    assert backend.compilations == 3  # compiled again, once, while admitting
    admit(params("b+"))  # evicts "a+" again before the engine runs the request
    assert backend.compilations == 4
    assert threads and all(name.startswith("admit") for name in threads)
    worker.shutdown()

    a, b = first.constraints
    assert a is not b and a.matcher is not b.matcher  # each sample walks its own copy
    for request_id, admitted in [("first", first), ("again", again), ("evicted", evicted)]:
        engine.add_request(request_id, admitted)
    before = len(threads)

    def run() -> None:
        while engine.has_unfinished_requests():
            engine.step()

    engine_thread = threading.Thread(target=run, name="jaxserve-engine")
    engine_thread.start()
    engine_thread.join(timeout=60)
    assert not engine_thread.is_alive()
    assert backend.compilations == 4 and len(threads) == before  # the engine never compiled
    engine.allocator.check_all_free()


def test_refused_requests_compile_nothing(engine):
    backend = engine.admission.constraint_factory
    with pytest.raises(ParamError) as too_long:
        engine.admission.admit(list(range(10, 140)), params("c+"))
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(ParamError) as bad_n:
        engine.admission.admit([10], params("c+", n=9))
    assert bad_n.value.param == "n"
    assert backend.compilations == 0
    with pytest.raises(GrammarError) as bad_grammar:
        engine.admission.admit([10], params("a(b"))
    assert bad_grammar.value.field == "regex"


def test_one_grammar_for_several_prompts(engine):
    backend = engine.admission.constraint_factory
    admitted = engine.admission.admit_all([[10], [11, 12]], params("d+", n=2))
    assert backend.compilations == 1
    assert [r.prompt_token_ids for r in admitted] == [[10], [11, 12]]
    constraints = [c for r in admitted for c in r.constraints]
    assert len({id(c) for c in constraints}) == 4
