"""lm-evaluation-harness's log-likelihood request on SmolLM2 over HTTP: completions with echo,
logprobs and max_tokens 0 give each prompt token's logprob as transformers computes it (float32
weights, within 1e-4), for a prompt longer than one step's token budget."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.chats import CHATS
from tests.support.live_server import serve
from tests.support.prompt_logprobs import hf_prompt_logits, log_softmax

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_server(smollm2_reference_llm):
    """SmolLM2 on the reference backend, instead of the session's tiny server."""
    with serve(smollm2_reference_llm) as live:
        yield live


def test_echo_max_tokens_0_scores_the_prompt_as_transformers(http, live_server, smollm2_dir):
    text = " ".join(CHATS * 5)
    ids = live_server.tokenizer(text, add_special_tokens=True).input_ids
    assert len(ids) > live_server.engine.config.scheduler.max_num_batched_tokens  # chunked
    response = http.post("/v1/completions", json={
        "prompt": text, "echo": True, "logprobs": 1, "max_tokens": 0, "temperature": 0})
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    lp = choice["logprobs"]
    assert choice["text"] == text and lp["token_logprobs"][0] is None
    ref = log_softmax(hf_prompt_logits(smollm2_dir, ids))
    want = ref[np.arange(len(ids) - 1), ids[1:]]
    np.testing.assert_allclose(lp["token_logprobs"][1:], want, atol=1e-4, rtol=0)
    # what lm-evaluation-harness reads: is the continuation the greedy one, token by token
    greedy = [max(top.values()) == token_lp for top, token_lp
              in zip(lp["top_logprobs"][1:], lp["token_logprobs"][1:])]
    assert greedy == list(ref[np.arange(len(ids) - 1)].argmax(-1) == np.array(ids[1:]))
