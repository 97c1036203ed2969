"""The model served through the Pallas kernels (interpret mode on CPU) says exactly what it says
through the pure-jnp reference."""

from __future__ import annotations

import pytest

from jaxserve.sampling_params import SamplingParams
from tests.support.chats import CHATS, chat_ids
from tests.support.configs import smollm2_overrides


@pytest.mark.slow
def test_smollm2_greedy_pallas_equals_reference(smollm2_dir, smollm2_reference_llm):
    from jaxserve.llm import LLM

    pallas = LLM(None, progress=False, **smollm2_overrides(smollm2_dir, "pallas"))
    assert pallas.info.attention_backend == "pallas"
    ids = [chat_ids(pallas.tokenizer, p) for p in CHATS]
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    ours = [o.outputs[0].token_ids for o in pallas.generate_ids(ids, params)]
    ref = [o.outputs[0].token_ids for o in smollm2_reference_llm.generate_ids(ids, params)]
    assert ours == ref
    pallas.engine.allocator.check_all_free()
