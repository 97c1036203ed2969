"""Detokenizing and stopping, driven by a scripted runner through the real engine."""

from __future__ import annotations

from jaxserve.config import load_config
from jaxserve.engine.llm_engine import LLMEngine
from jaxserve.sampling_params import SamplingParams
from tests.support.fake_runner import ScriptedRunner


def run_script(tokenizer, text: str, params: SamplingParams, extra: list[int] = ()):
    script = tokenizer(text, add_special_tokens=False).input_ids + list(extra)
    config = load_config(None, {"cache.page_size": 4, "cache.num_pages": 64,
                                "scheduler.max_num_seqs": 4, "scheduler.max_num_batched_tokens": 16,
                                "scheduler.token_buckets": [16], "scheduler.seq_buckets": [4],
                                "scheduler.num_decode_steps": 1})  # one token per step
    engine = LLMEngine(config, ScriptedRunner(script), tokenizer, max_model_len=128,
                       vocab_size=len(tokenizer), eos_token_ids=(tokenizer.eos_token_id,))
    prompt = tokenizer("hi", add_special_tokens=False).input_ids
    engine.add_request("r", engine.admission.admit(prompt, params))
    deltas = []
    while engine.has_unfinished_requests():
        deltas += [c for out in engine.step() for c in out.outputs]
    engine.allocator.check_all_free()
    return deltas


def test_multibyte_characters_are_never_split(tiny_tokenizer):
    text = "é😀ü"  # 2 + 4 + 2 bytes, one byte token each
    deltas = run_script(tiny_tokenizer, text, SamplingParams(max_tokens=8, temperature=0))
    assert "".join(d.text for d in deltas) == text
    assert all("\ufffd" not in d.text for d in deltas)
    assert [d.text for d in deltas if d.text] == ["é", "😀", "ü"]


def test_stop_string_across_tokens_is_cut_and_never_streamed(tiny_tokenizer):
    deltas = run_script(tiny_tokenizer, "hello world and more",
                        SamplingParams(max_tokens=20, temperature=0, stop=["o w"]))
    assert "".join(d.text for d in deltas) == "hell"
    assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_reason == "o w"


def test_stop_string_kept_when_asked(tiny_tokenizer):
    deltas = run_script(tiny_tokenizer, "hello world",
                        SamplingParams(max_tokens=20, temperature=0, stop=["wor", "xyz"],
                                       include_stop_str_in_output=True))
    assert "".join(d.text for d in deltas) == "hello wor"


def test_eos_ends_with_stop_and_no_text(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    deltas = run_script(tiny_tokenizer, "ab", SamplingParams(max_tokens=20, temperature=0), [eos])
    assert "".join(d.text for d in deltas) == "ab"
    assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_reason is None
    assert sum(len(d.token_ids) for d in deltas) == 3
    assert sum(1 for d in deltas if d.finish_reason) == 1


def test_length_finish(tiny_tokenizer):
    deltas = run_script(tiny_tokenizer, "abcdef", SamplingParams(max_tokens=3, temperature=0))
    assert "".join(d.text for d in deltas) == "abc"
    assert deltas[-1].finish_reason == "length"
