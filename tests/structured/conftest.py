"""Helpers of the structured-output tests: a random model that walks a grammar."""

from __future__ import annotations

import numpy as np
import pytest

from jaxserve.engine.constraints import bitmask_words
from jaxserve.sampling_params import StructuredOutputs
from jaxserve.structured import GrammarBackend

EOS = 2  # the tiny models' eos id


def allowed(bitmask: np.ndarray, row: int, vocab: int) -> np.ndarray:
    bits = (bitmask[row].view(np.uint32)[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    return np.flatnonzero(bits.reshape(-1)[:vocab])


def _random_walk(backend: GrammarBackend, so: StructuredOutputs, tokenizer, seed: int,
                 max_tokens: int = 400) -> tuple[str, bool]:
    """Text the random model writes under the constraint, and whether it ended by itself."""
    (constraint,) = backend.constraints(so, 1)
    rng = np.random.default_rng(seed)
    vocab = backend.vocab_size
    bitmask = np.full((3, bitmask_words(vocab)), -1, np.int32)
    tokens = []
    for _ in range(max_tokens):
        constraint.fill_bitmask(bitmask, 1)
        choices = allowed(bitmask, 1, vocab)
        assert len(choices), "the grammar allowed nothing"
        # prefer ending when allowed half the time, so walks finish
        token = EOS if EOS in choices and rng.random() < 0.5 else int(rng.choice(choices))
        constraint.accept_token(token)
        if token == EOS:
            return tokenizer.decode(tokens), True
        tokens.append(token)
        if constraint.is_terminated():
            return tokenizer.decode(tokens), True
    return tokenizer.decode(tokens), False


@pytest.fixture
def random_walk():
    """random_walk(backend, so, tokenizer, seed, max_tokens=400) -> (text, ended by itself)"""
    return _random_walk


@pytest.fixture
def allowed_ids():
    """allowed_ids(bitmask, row, vocab) -> the token ids the row allows"""
    return allowed
