"""Prompt logprobs as a reference computes them (numpy over teacher-forced logits), and the check
of an engine's against them."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:  # f32[T, V] -> f64[T, V]
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def assert_prompt_logprobs_match(ours: list, token_ids: list[int], logits: np.ndarray, k: int,
                                 atol: float, top_rtol: float = 0.0) -> None:
    """ours: an engine's prompt_logprobs; logits: f32[T, V], row p the distribution of token
    p + 1. Each prompt token's logprob within atol, its rank as the reference's (ties within atol
    aside), the top-k ids the reference's and their logprobs within atol (+ top_rtol relative)."""
    ref = log_softmax(logits)  # f64[T, V]
    assert ours[0] is None and len(ours) == len(token_ids)
    got = np.array([e.logprob for e in ours[1:]])
    want = ref[np.arange(len(token_ids) - 1), token_ids[1:]]
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    for p, entry in enumerate(ours[1:]):
        assert entry.token_id == token_ids[p + 1]
        row = ref[p]
        # a rank from float32 logprobs may differ where the reference's neighbours are that close
        near = np.abs(row - want[p]) <= atol
        above = int((row > want[p] + atol).sum())
        assert above + 1 <= entry.rank <= above + int(near.sum()), (p, entry.rank, above)
        top = [t.token_id for t in entry.top]
        assert len(top) == k
        np.testing.assert_allclose([t.logprob for t in entry.top], row[top], atol=atol,
                                   rtol=top_rtol)
        # the ids: the reference's top-k, unless a neighbour of the k-th is within atol of it
        kth = np.sort(row)[::-1][k - 1] if k else np.inf
        clear = [int(i) for i in np.argsort(-row)[:k] if row[i] > kth + atol]
        assert set(clear) <= set(top), (p, clear, top)


def hf_prompt_logits(model_dir, token_ids: list[int]) -> np.ndarray:  # f32[T, V]
    """transformers' logits (torch, float32) at every position of token_ids."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].numpy()
