"""The jitted sampler on small hand-made logits."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxserve.runner.sampler import sample
from jaxserve.runner.sampling_metadata import SamplingArrays

V = 64


def metadata(rows: int, **fields) -> SamplingArrays:
    base = dict(
        temperature=np.zeros(rows, np.float32), top_p=np.ones(rows, np.float32),
        top_k=np.zeros(rows, np.int32), min_p=np.zeros(rows, np.float32),
        presence_penalty=np.zeros(rows, np.float32), frequency_penalty=np.zeros(rows, np.float32),
        repetition_penalty=np.ones(rows, np.float32),
        bias_ids=np.full((rows, 4), -1, np.int32), bias_values=np.zeros((rows, 4), np.float32),
        rng_keys=np.stack([np.array([7, i], np.uint32) for i in range(rows)]),
        rng_steps=np.zeros(rows, np.int32), history=np.full((rows, 8), -1, np.int32),
        num_prompt_tokens=np.zeros(rows, np.int32),
        token_bitmask=np.full((rows, V // 32), -1, np.int32),
    )
    base.update({k: np.asarray(v) for k, v in fields.items()})
    base["any_random"] = np.array(bool((base["temperature"] > 0).any()))
    base["any_filter"] = np.array(bool(((base["top_p"] < 1) | (base["top_k"] > 0)).any()))
    base["any_penalty"] = np.array(bool((base["presence_penalty"] != 0).any()
                                        or (base["frequency_penalty"] != 0).any()
                                        or (base["repetition_penalty"] != 1).any()))
    base["any_mask"] = np.array(bool((base["token_bitmask"] != -1).any()))
    base["any_logprobs"] = np.array(True)
    return SamplingArrays(**base)


_sample = jax.jit(sample)


def random_logits(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, V)).astype(np.float32) * 3


def test_greedy_picks_argmax_and_reports_logprobs():
    logits = random_logits(3)
    tokens, lp, top_ids, top_lp = jax.device_get(_sample(logits, metadata(3)))
    np.testing.assert_array_equal(tokens, logits.argmax(-1))
    ref = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(lp, ref[np.arange(3), tokens], rtol=1e-5)
    np.testing.assert_array_equal(top_ids[:, 0], tokens)
    np.testing.assert_allclose(top_lp, np.sort(ref, -1)[:, ::-1][:, :20], rtol=1e-5)


def test_top_k_1_and_tiny_top_p_and_full_min_p_are_greedy():
    logits = random_logits(3, seed=1)
    temp = np.full(3, 1.5, np.float32)
    for fields in ({"top_k": np.ones(3, np.int32)}, {"top_p": np.full(3, 1e-6, np.float32)},
                   {"min_p": np.ones(3, np.float32)}):
        tokens = jax.device_get(_sample(logits, metadata(3, temperature=temp, **fields))[0])
        np.testing.assert_array_equal(tokens, logits.argmax(-1))


def test_top_k_restricts_draws_to_the_k_best():
    logits = np.zeros((1, V), np.float32)
    logits[0, :5] = [5, 4, 3, 2, 1]
    seen = set()
    for step in range(64):
        sm = metadata(1, temperature=[2.0], top_k=[3], rng_steps=[step])
        seen.add(int(jax.device_get(_sample(logits, sm)[0])[0]))
    assert seen == {0, 1, 2}


def test_logit_bias_forces_a_token():
    logits = random_logits(2, seed=2)
    sm = metadata(2, bias_ids=[[17, -1, -1, -1], [-1] * 4], bias_values=[[100, 0, 0, 0], [0] * 4])
    tokens = jax.device_get(_sample(logits, sm)[0])
    assert tokens[0] == 17 and tokens[1] == logits[1].argmax()


def test_penalties_match_a_numpy_reference():
    logits = random_logits(1, seed=3)
    history = np.array([[5, 6, 7, 7, 9, -1, -1, -1]], np.int32)  # prompt 5,6; output 7,7,9
    sm = metadata(1, history=history, num_prompt_tokens=[2], repetition_penalty=[1.3],
                  frequency_penalty=[0.5], presence_penalty=[0.25])
    ref = logits[0].copy()
    for t in (5, 6, 7, 9):
        ref[t] = ref[t] / 1.3 if ref[t] > 0 else ref[t] * 1.3
    ref[7] -= 0.5 * 2 + 0.25
    ref[9] -= 0.5 * 1 + 0.25
    tokens = jax.device_get(_sample(logits, sm)[0])
    assert tokens[0] == ref.argmax()
    # make the penalty decide: the best token is repeated, the runner-up is not
    logits2 = np.zeros((1, V), np.float32)
    logits2[0, 7], logits2[0, 8] = 2.0, 1.9
    assert jax.device_get(_sample(logits2, sm)[0])[0] == 8


def test_seeded_draws_depend_only_on_the_row_key_and_step():
    logits = random_logits(4, seed=4)
    temp = np.ones(4, np.float32)
    a = jax.device_get(_sample(logits, metadata(4, temperature=temp, rng_steps=[3, 3, 3, 3]))[0])
    # same row key, other rows changed: row 0 keeps its token
    other = random_logits(4, seed=5)
    other[0] = logits[0]
    b = jax.device_get(_sample(other, metadata(4, temperature=temp, rng_steps=[3, 9, 9, 9]))[0])
    assert a[0] == b[0]

    rows = 16
    flat = np.zeros((rows, V), np.float32)  # every token equally likely: the draw is the key's

    def draw(keys, steps, logits=flat):
        sm = metadata(rows, temperature=np.ones(rows, np.float32), rng_keys=keys,
                      rng_steps=np.asarray(steps, np.int32))
        return jax.device_get(_sample(logits, sm)[0]).tolist()

    key = np.array([7, 123], np.uint32)
    one_key = np.tile(key, (rows, 1))
    # one key in every row, step i in row i: the step changes the draw
    by_step = draw(one_key, np.arange(rows))
    assert len(set(by_step)) > rows // 2, by_step
    # the same key and step in every row: one token, whichever the row
    assert draw(one_key, np.full(rows, 5)) == [by_step[5]] * rows
    # that key and step in row 9 among other keys, steps and logits: still that token
    keys = np.stack([np.array([1, i], np.uint32) for i in range(rows)])
    keys[9] = key
    steps = np.arange(rows) * 3 + 1
    steps[9] = 5
    others = random_logits(rows, seed=6)
    others[9] = flat[9]
    mixed = draw(keys, steps, others)
    assert mixed[9] == by_step[5]
    # and other keys at the same step draw other tokens
    assert len(set(draw(keys, np.full(rows, 5)))) > rows // 2


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_draws_follow_the_softmax(temperature):
    logits = np.log(np.array([[0.5, 0.3, 0.2] + [1e-9] * (V - 3)], np.float32))
    rows = 512
    sm = metadata(rows, temperature=np.full(rows, temperature, np.float32),
                  rng_keys=np.stack([np.array([1, i], np.uint32) for i in range(rows)]))
    tokens = jax.device_get(_sample(np.repeat(logits, rows, 0), sm)[0])
    p = np.array([0.5, 0.3, 0.2]) ** (1 / temperature)
    p /= p.sum()
    freq = np.bincount(tokens, minlength=3)[:3] / rows
    np.testing.assert_allclose(freq, p, atol=0.07)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_grammar_bitmask_allows_only_its_tokens(temperature):
    logits = random_logits(2, seed=6)
    mask = np.zeros((2, V // 32), np.uint32)
    mask[0, 1] = 1 << 3  # row 0: only token 35
    mask[1, :] = 0xFFFFFFFF
    mask[1, 1] = 0x7FFFFFFF  # row 1: everything but token 63
    logits[1, 63] = 100.0
    for step in range(8):
        sm = metadata(2, temperature=np.full(2, temperature, np.float32),
                      token_bitmask=mask.view(np.int32), rng_steps=[step, step])
        tokens = jax.device_get(_sample(logits, sm)[0])
        assert tokens[0] == 35 and tokens[1] != 63


def test_logprobs_are_skipped_when_no_row_wants_them():
    logits = random_logits(2, seed=7)
    sm = metadata(2)
    sm = SamplingArrays(**{**sm.__dict__, "any_logprobs": np.array(False)})
    tokens, lp, top_ids, top_lp = jax.device_get(_sample(logits, sm))
    np.testing.assert_array_equal(tokens, logits.argmax(-1))
    assert not lp.any() and not top_ids.any() and not top_lp.any()


def test_argmax_matches_jnp_argmax_on_ties_nan_and_masked_rows():
    from jaxserve.runner.sampler import argmax

    x = random_logits(6, seed=3)
    x[1, [5, 40]] = x[1].max() + 1  # a tie: the first index wins
    x[2, [7, 30]] = np.nan  # NaN: the first NaN, as jnp.argmax
    x[3] = -np.inf  # everything masked
    x[4, 63] = np.inf
    x[5] = np.float32(-1e30)  # the sampler's mask value everywhere
    got = np.asarray(jax.jit(argmax)(x))
    np.testing.assert_array_equal(got, np.asarray(jax.numpy.argmax(x, axis=-1)))
    assert list(got[:3]) == [x[0].argmax(), 5, 7]
