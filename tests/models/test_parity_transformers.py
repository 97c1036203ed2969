"""jaxserve's Llama against transformers' (torch, float32): logits and greedy tokens.

SmolLM2 is the real default model (slow: pulled once per machine); a tiny random Qwen2 built
inside the test covers qkv bias, untied embeddings and GQA.
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxserve.kernels.ragged_paged_attention.cpu_attention import (
    cpu_ragged_paged_attention,
    cpu_update_kv_pages,
)
from jaxserve.kernels.ragged_paged_attention.kv_storage import kv_storage_dtype
from jaxserve.models.attention_metadata import AttentionBackend
from jaxserve.models.loader import load_model
from jaxserve.sampling_params import SamplingParams
from jaxserve.scoring import prompt_logits
from tests.support.chats import CHATS, chat_ids

REFERENCE = AttentionBackend("reference", cpu_ragged_paged_attention, cpu_update_kv_pages,
                             kv_storage_dtype)


def jax_prompt_logits(model_dir, token_ids: list[int]) -> np.ndarray:  # f32[T, V]
    return prompt_logits(load_model(model_dir, REFERENCE, "float32"), token_ids)


def hf_model(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def hf_logits(model, token_ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].numpy()


def hf_greedy(model, token_ids: list[int], new_tokens: int) -> list[int]:
    import torch

    # a plain argmax loop: generate() would stop at (or, with min_new_tokens, mask) eos
    out, past, inputs = [], None, torch.tensor([token_ids])
    with torch.no_grad():
        for _ in range(new_tokens):
            step = model(inputs, past_key_values=past, use_cache=True)
            past = step.past_key_values
            out.append(int(step.logits[0, -1].argmax()))
            inputs = torch.tensor([[out[-1]]])
    return out


def assert_logits_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    rel = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert rel < 1e-4, f"max relative logit difference {rel:.2e}"


def check_parity(model_dir, llm, prompts: list[str]) -> None:
    ref = hf_model(model_dir)
    ids = [chat_ids(llm.tokenizer, p) for p in prompts]
    assert_logits_close(jax_prompt_logits(model_dir, ids[0]), hf_logits(ref, ids[0]))
    # ignore_eos: all 32 tokens are compared even where the reply would have ended
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    ours = [o.outputs[0].token_ids for o in llm.generate_ids(ids, params)]
    theirs = [hf_greedy(ref, p, 32) for p in ids]
    for prompt, a, b in zip(prompts, ours, theirs):
        assert a == b, f"{prompt!r}: jaxserve {a} != transformers {b}"


def test_tiny_qwen2_matches_transformers():
    from jaxserve.llm import LLM
    from jaxserve.pull import resolve_model

    model_dir = resolve_model("tiny-random-qwen2")
    overrides = {"model.path": str(model_dir), "model.attention_backend": "reference",
                 "model.max_model_len": 256, "cache.page_size": 8, "cache.num_pages": 128,
                 "scheduler.max_num_seqs": 8, "scheduler.max_num_batched_tokens": 64,
                 "scheduler.token_buckets": [16, 64], "scheduler.seq_buckets": [8]}
    check_parity(model_dir, LLM(None, progress=False, **overrides), CHATS[:4])


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2_dir, smollm2_reference_llm):
    check_parity(smollm2_dir, smollm2_reference_llm, CHATS)
