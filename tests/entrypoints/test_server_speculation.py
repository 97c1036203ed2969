"""Speculative decoding behind the HTTP API: vLLM's flag, the same completions, its metrics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jaxserve.cli import config_from_args, parser
from jaxserve.config import ConfigError
from tests.support.configs import TINY_CONFIG
from tests.support.live_server import serve

SPEC = '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2}'


@pytest.fixture(scope="module")
def live_server():
    from jaxserve.llm import LLM

    args = parser().parse_args(["run", "--config", str(TINY_CONFIG), "--speculative-config", SPEC])
    llm = LLM(config_from_args(args), progress=False)
    with serve(llm) as live:
        yield live


def test_the_flag_takes_vllms_json_and_refuses_what_it_does_not_serve(capsys):
    args = parser().parse_args(["run", "--speculative-config", SPEC])
    spec = config_from_args(args).scheduler.speculative_config
    assert (spec.method, spec.num_speculative_tokens) == ("ngram", 4)
    assert (spec.prompt_lookup_min, spec.prompt_lookup_max) == (2, 2)  # vLLM: max follows min
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "--speculative-config", "{not json"])
    assert "not JSON" in capsys.readouterr().err
    for bad, field in (('{"method": "eagle", "num_speculative_tokens": 2}', "method"),
                       ('{"method": "ngram"}', "num_speculative_tokens"),
                       ('{"method": "ngram", "num_speculative_tokens": 2, "model": "x"}', "model")):
        with pytest.raises(ConfigError, match=field):
            config_from_args(parser().parse_args(["run", "--speculative-config", bad]))


def test_completions_are_those_of_the_engine_without_it(http, tiny_llm):
    from jaxserve.sampling_params import SamplingParams

    prompt = "abcabcabcabc abcabc"
    body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True,
            "logprobs": 1}
    reply = http.post("/v1/completions", json=body).json()
    streamed = "".join(e["choices"][0]["text"] for e in http.sse("/v1/completions", body)
                       if e != "[DONE]" and e["choices"])
    plain = tiny_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=24,
                                                       ignore_eos=True))[0].outputs[0].text
    assert reply["choices"][0]["text"] == streamed == plain
    assert reply["usage"]["completion_tokens"] == 24
    assert len(reply["choices"][0]["logprobs"]["tokens"]) == 24


def test_metrics_count_drafts_as_vllm_names_them(http):
    http.post("/v1/completions", json={"prompt": "xyz xyz xyz xyz xyz", "max_tokens": 24,
                                       "temperature": 0, "ignore_eos": True})
    families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}

    def value(name: str) -> float:
        return sum(s.value for s in families[name].samples if s.name.endswith("_total")
                   or s.name == name)

    drafts = value("jaxserve:spec_decode_num_drafts")
    drafted = value("jaxserve:spec_decode_num_draft_tokens")
    accepted = value("jaxserve:spec_decode_num_accepted_tokens")
    assert 0 < accepted <= drafted and drafts > 0
    per_pos = families["jaxserve:spec_decode_num_accepted_tokens_per_pos"].samples
    assert sorted(s.labels["position"] for s in per_pos) == ["0", "1", "2", "3"]
    assert sum(s.value for s in per_pos) == accepted
    rate = value("jaxserve:spec_decode_draft_acceptance_rate")
    assert rate == pytest.approx(accepted / drafted)
    assert value("jaxserve:spec_decode_mean_acceptance_length") == pytest.approx(
        1 + accepted / drafts)
