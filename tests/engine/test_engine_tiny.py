"""The whole engine on the tiny random model: batching, chunking, compilation and pages."""

from __future__ import annotations

import numpy as np
import pytest

from jaxserve.sampling_params import SamplingParams
from tests.support.configs import TINY_CONFIG
from tests.support.prompts import LONG, prompts


def tokens_of(llm, texts, params):
    return [o.outputs[0].token_ids for o in llm.generate(texts, params)]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_tokens=12),
    SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=1234, max_tokens=12),
], ids=["greedy", "seeded"])
def test_batched_equals_alone(tiny_llm, params):
    batch = prompts(7) + [LONG]
    together = tokens_of(tiny_llm, batch, params)
    alone = [tokens_of(tiny_llm, [p], params)[0] for p in batch]
    assert together == alone
    assert len(set(map(tuple, together))) > 1  # not a degenerate model that always says one thing


def test_chunked_prefill_equals_one_shot(tiny_llm):
    """LONG is split into chunks by the 64-token budget; teacher-forcing its prefix one token at
    a time through the decode path must give the same next tokens."""
    params = SamplingParams(temperature=0, max_tokens=6)
    chunked = tokens_of(tiny_llm, [LONG], params)[0]
    ids = tiny_llm.tokenizer(LONG, add_special_tokens=False).input_ids
    assert len(ids) > 64 * 2
    # shorter prefixes fit in one chunk: their greedy continuation must agree with the long one
    shorter = tiny_llm.generate_ids([ids[:60]], SamplingParams(temperature=0, max_tokens=1))
    assert shorter[0].outputs[0].token_ids[0] == tokens_of(tiny_llm, [ids[:60]], params)[0][0]
    assert chunked == tokens_of(tiny_llm, [ids], params)[0]


def test_n_samples_are_distinct_and_reproducible(tiny_llm):
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=10)
    first = [c.token_ids for c in tiny_llm.generate(["hello"], params)[0].outputs]
    again = [c.token_ids for c in tiny_llm.generate(["hello"], params)[0].outputs]
    assert first == again
    assert len(set(map(tuple, first))) == 4


def test_no_recompiles_and_no_lost_pages_over_mixed_traffic(tiny_llm):
    from jaxserve.runner.compile_cache import backend_compile_count

    engine = tiny_llm.engine
    rng = np.random.default_rng(0)
    before = backend_compile_count()
    texts, params = [], []
    for i in range(50):
        texts.append("x" * int(rng.integers(1, 150)))
        params.append(SamplingParams(
            temperature=float(rng.choice([0.0, 0.5, 1.3])), top_p=float(rng.choice([1.0, 0.8])),
            top_k=int(rng.choice([0, 5])), min_p=float(rng.choice([0.0, 0.1])),
            presence_penalty=float(rng.choice([0.0, 0.5])), repetition_penalty=float(rng.choice([1.0, 1.2])),
            logit_bias={int(rng.integers(0, 259)): 5.0} if i % 3 == 0 else None,
            n=int(rng.choice([1, 2])), seed=int(rng.integers(0, 1000)) if i % 2 else None,
            max_tokens=int(rng.integers(1, 20)), logprobs=int(rng.choice([0, 3])) if i % 4 == 0 else None,
            stop=["ab"] if i % 5 == 0 else [],
        ))
    outs = tiny_llm.generate(texts, params)
    assert all(c.finish_reason in ("stop", "length") for o in outs for c in o.outputs)
    assert engine.runner.compilations_after_warmup == 0
    assert backend_compile_count() == before
    engine.allocator.check_all_free()


def test_pages_return_after_abort_and_preemption(tiny_llm):
    engine = tiny_llm.engine
    # overfill the cache: 256 pages of 8 tokens; 8 sequences of 400 tokens need 400 pages
    for i in range(8):
        params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
        engine.add_request(f"big{i}", engine.admission.admit([5 + i] * 200, params))
    steps = 0
    while engine.has_unfinished_requests() and steps < 2000:
        engine.step()
        steps += 1
        if steps == 30:
            engine.abort_request("big3")
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.num_preemptions > 0
    engine.allocator.check_all_free()


def test_prefix_cache_hit_gives_the_same_tokens(tiny_llm):
    params = SamplingParams(temperature=0, max_tokens=8)
    text = "a shared system prompt that spans several pages " * 3
    first = tiny_llm.generate([text + "question one"], params)[0]
    second = tiny_llm.generate([text + "question one"], params)[0]
    assert second.num_cached_tokens >= 8 * (len(text) // 8) - 8
    assert first.outputs[0].token_ids == second.outputs[0].token_ids


def test_multi_step_decode_equals_single_steps(tiny_llm):
    """Decode bursts (num_decode_steps=4, the tiny config's default) feed tokens back on the
    device; one step per call must give the same tokens, greedy and seeded."""
    from jaxserve.llm import LLM

    assert tiny_llm.config.scheduler.num_decode_steps > 1
    single = LLM(TINY_CONFIG, progress=False, **{"scheduler.num_decode_steps": 1})
    batch = prompts(5)
    for params in (SamplingParams(temperature=0, max_tokens=11),
                   SamplingParams(temperature=1.0, seed=3, max_tokens=11, logprobs=2)):
        ours = tiny_llm.generate(batch, params)
        ref = single.generate(batch, params)
        assert [o.outputs[0].token_ids for o in ours] == [o.outputs[0].token_ids for o in ref]
        if params.logprobs:
            a = [lp.logprob for o in ours for lp in o.outputs[0].logprobs]
            b = [lp.logprob for o in ref for lp in o.outputs[0].logprobs]
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    steps = tiny_llm.engine.stats.steps
    tiny_llm.generate(["burst"], SamplingParams(temperature=0, max_tokens=9, ignore_eos=True))
    assert tiny_llm.engine.stats.steps - steps == 3  # prefill + 2 bursts of 4


def test_async_scheduling_equals_one_step_at_a_time(tiny_llm, monkeypatch):
    """Steps launched before the previous one's tokens reach the host (their decode inputs read
    on the device) must give exactly the tokens of one step at a time: greedy, seeded, with
    logprobs, stop strings and mixed lengths."""
    engine = tiny_llm.engine
    sched = engine.config.scheduler
    assert sched.async_scheduling
    launched = []
    launch = engine.runner.launch
    monkeypatch.setattr(engine.runner, "launch", lambda inputs: launched.append(inputs) or launch(inputs))
    batch = prompts(6) + [LONG]
    cases = [SamplingParams(temperature=0, max_tokens=13),
             SamplingParams(temperature=1.0, seed=5, max_tokens=9, logprobs=2, stop=["a"])]
    ours = [tiny_llm.generate(batch, p) for p in cases]
    assert any((s.prev_rows >= 0).any() for s in launched)  # decode tokens came from the device
    monkeypatch.setattr(sched, "async_scheduling", False)
    ref = [tiny_llm.generate(batch, p) for p in cases]
    for a, b in zip(ours, ref):
        assert [(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason) for o in a] \
            == [(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason) for o in b]
    lps = [[lp.logprob for o in r[1] for lp in o.outputs[0].logprobs] for r in (ours, ref)]
    np.testing.assert_allclose(*lps, rtol=1e-5, atol=1e-6)
    engine.allocator.check_all_free()


def test_lone_sequence_multi_step_is_unrolled_and_exact():
    """A (1, 1) bucket's multi-step executable is an unrolled scan (model_runner); a lone greedy
    request must give the same tokens through it as one step per call."""
    from jaxserve.llm import LLM

    small = {"scheduler.token_buckets": [1, 64], "scheduler.seq_buckets": [1, 8]}
    params = SamplingParams(temperature=0, max_tokens=11)
    multi = LLM(TINY_CONFIG, progress=False, **small, **{"scheduler.num_decode_steps": 4,
                                                          "scheduler.multi_step_max_seqs": 1})
    assert ((1, 1), 4) in multi.engine.runner.executables
    assert not any(steps > 1 and bucket != (1, 1)
                   for bucket, steps, *_ in multi.engine.runner.executables)
    one = LLM(TINY_CONFIG, progress=False, **small, **{"scheduler.num_decode_steps": 1})
    assert tokens_of(multi, [LONG], params) == tokens_of(one, [LONG], params)


def test_layer_groups_give_the_whole_model_step_results():
    """model.layers_per_call splits each bucket into embed, layer-group and head programs
    (runner/layer_groups.py); the tokens and log-probs must be the one-program step's."""
    from jaxserve.llm import LLM
    from jaxserve.runner.layer_groups import GroupedStep

    one = {"scheduler.num_decode_steps": 1}
    whole = LLM(TINY_CONFIG, progress=False, **one)
    split = LLM(TINY_CONFIG, progress=False, **one, **{"model.layers_per_call": 1})
    assert split.engine.runner.executables
    assert all(isinstance(exe, GroupedStep) for exe in split.engine.runner.executables.values())
    assert len(split.engine.runner.layer_groups.groups) == 2  # the tiny model's 2 layers
    batch = prompts(5) + [LONG]  # chunked prefill beside decodes, several buckets
    for params in (SamplingParams(temperature=0, max_tokens=10, logprobs=2),
                   SamplingParams(temperature=0.8, seed=3, max_tokens=10, logprobs=2)):
        ours, ref = split.generate(batch, params), whole.generate(batch, params)
        assert [o.outputs[0].token_ids for o in ours] == [o.outputs[0].token_ids for o in ref]
        lps = [[lp.logprob for o in r for lp in o.outputs[0].logprobs] for r in (ours, ref)]
        np.testing.assert_allclose(*lps, rtol=1e-5, atol=1e-5)
    split.engine.allocator.check_all_free()


def test_layer_groups_reject_a_bad_split():
    from jaxserve.config import ConfigError, load_config
    from jaxserve.llm import LLM

    with pytest.raises(ConfigError, match="num_decode_steps"):
        load_config(TINY_CONFIG, {"model.layers_per_call": 1, "scheduler.num_decode_steps": 4})
    with pytest.raises(ConfigError, match="at least 1"):
        load_config(TINY_CONFIG, {"model.layers_per_call": 0, "scheduler.num_decode_steps": 1})
    with pytest.raises(ConfigError, match="must divide the model.s 2 layers"):
        LLM(TINY_CONFIG, progress=False, **{"model.layers_per_call": 3,
                                            "scheduler.num_decode_steps": 1})


def test_cli_layers_per_call_flag():
    """--layers-per-call reaches the config, and a config it breaks is a clean error from the
    CLI, not a traceback."""
    from jaxserve.cli import config_from_args, main, parser
    from jaxserve.config import ConfigError

    flags = ["--config", str(TINY_CONFIG), "--prompt", "hi", "--max-tokens", "2"]
    args = parser().parse_args(["generate", *flags, "--layers-per-call", "1"])
    # tiny.yaml keeps the default 4 decode steps per call, which groups cannot run
    with pytest.raises(ConfigError, match="num_decode_steps"):
        config_from_args(args)
    with pytest.raises(SystemExit) as exc:
        main(["generate", *flags, "--layers-per-call", "1"])
    assert "invalid config: model.layers_per_call" in str(exc.value)
