"""The prompt-lookup index against its plain-scan oracle, and the draft back-off."""

from __future__ import annotations

import numpy as np
import pytest

from jaxserve.config import SpeculativeConfig
from jaxserve.engine.ngram_proposer import NgramIndex, continuation, propose_reference
from jaxserve.engine.speculation import FIRST_LENGTH, MAX_BACKOFF, Speculator


@pytest.mark.parametrize("seed", range(40))
def test_index_proposes_what_a_plain_scan_finds(seed):
    rng = np.random.default_rng(seed)
    vocab = int(rng.integers(2, 12))  # small vocabularies repeat n-grams often
    tokens = [int(t) for t in rng.integers(0, vocab, int(rng.integers(1, 120)))]
    min_n = int(rng.integers(1, 4))
    max_n = min_n + int(rng.integers(0, 4))
    index = NgramIndex(min_n, max_n)
    # grown a few tokens at a time, as a sequence decodes, with a proposal at each length
    for size in range(1, len(tokens) + 1, int(rng.integers(1, 5))):
        k = int(rng.integers(1, 8))
        assert index.propose(tokens[:size], k) == propose_reference(tokens[:size], k, min_n,
                                                                    max_n), size


def test_latest_longest_match_and_its_continuation():
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3]
    # the suffix (2, 3) last appeared before 7 8; (5, 2, 3) never did
    assert NgramIndex(2, 3).propose(tokens, 3) == [7, 8, 5]
    assert NgramIndex(4, 4).propose(tokens, 3) == []
    # a suffix with no earlier occurrence proposes nothing, even at the smallest n
    assert NgramIndex(1, 2).propose([1, 2, 3], 2) == []


def test_a_match_near_the_end_reads_on_as_a_repeat():
    # (4, 5) last ended two tokens before the end: the text repeats with period 2
    assert continuation([1, 4, 5, 4, 5], 3, 5) == [4, 5, 4, 5, 4]
    assert NgramIndex(2, 2).propose([7, 7, 7], 4) == [7, 7, 7, 7]


def test_each_step_indexes_only_its_new_tokens():
    index = NgramIndex(2, 4)
    prompt = list(range(1000)) * 2
    index.propose(prompt, 4)
    entries = sum(len(e) for e in index.ends.values())
    index.propose(prompt + [5], 4)
    # one new end (the token that now follows the old last token), one entry per n at most
    assert sum(len(e) for e in index.ends.values()) - entries <= 3
    assert index.next_end == len(prompt) + 1


class _Seq:
    """What the speculator reads of a sequence."""

    def __init__(self, tokens, host_feeds=False, max_tokens=100):
        self.token_ids = list(tokens)
        self.host_feeds_each_step = host_feeds
        self.draft_state = None
        self.num_sampled_tokens = 0
        self.num_scheduled_tokens = len(tokens)
        self.request = type("R", (), {"max_tokens": max_tokens})()


def _speculator(k: int = 4, max_rows: int = 16, **kw) -> Speculator:
    config = SpeculativeConfig(num_speculative_tokens=k, prompt_lookup_min=2,
                               prompt_lookup_max=3, **kw)
    return Speculator(config, max_model_len=512, max_rows=max_rows)


def test_misses_back_off_doubling_and_a_hit_resets():
    spec = _speculator()
    seq = _Seq([1, 2, 3, 4, 5, 6])  # nothing repeats: every lookup misses
    waits = []
    for _ in range(200):
        drafted = spec.propose(seq, budget=64, num_running=1)
        assert drafted == []
        waits.append(seq.draft_state.wait)
    looked_up = [i for i, w in enumerate(waits) if i == 0 or waits[i - 1] == 0]
    gaps = np.diff(looked_up)
    assert list(gaps[:5]) == [1, 3, 5, 9, 17]  # tries again at once, then after 2, 4, 8, 16
    spec = _speculator()
    seq = _Seq([1, 2, 3, 4, 5, 6])
    for _ in range(2000):
        spec.propose(seq, budget=64, num_running=1)
    assert seq.draft_state.wait <= MAX_BACKOFF
    spec.accepted(seq, [1, 2], 1)
    assert seq.draft_state.misses == 0


def test_rows_the_host_feeds_never_draft_nor_wide_batches():
    spec = _speculator(disable_by_batch_size=4)
    assert spec.propose(_Seq([1, 2, 1, 2, 1], host_feeds=True), 64, 1) == []
    assert spec.propose(_Seq([1, 2, 1, 2, 1]), 64, num_running=5) == []
    assert spec.propose(_Seq([1, 2, 1, 2, 1]), 64, num_running=4) == [2, 1, 2]


def test_drafts_grow_after_a_whole_draft_is_accepted_and_shrink_after_a_miss():
    spec = _speculator(k=15)
    seq = _Seq([1, 2, 3] * 20)
    lengths = []
    for accept_all in (True, True, False, True):
        drafts = spec.propose(seq, budget=64, num_running=1)
        lengths.append(len(drafts))
        spec.accepted(seq, drafts, len(drafts) if accept_all else 0)
    lengths.append(len(spec.propose(seq, budget=64, num_running=1)))
    assert lengths == [FIRST_LENGTH, 15, 15, FIRST_LENGTH, 15]


def test_a_batch_shares_the_sample_rows_left_and_a_full_one_never_drafts():
    spec = _speculator(k=15, max_rows=16)
    seq = _Seq([1, 2, 3] * 20)
    spec.accepted(seq, spec.propose(seq, 64, num_running=2), FIRST_LENGTH)  # it may grow now
    assert len(spec.propose(seq, 64, num_running=2)) == 7
    assert len(spec.propose(_Seq([1, 2, 3] * 20), 64, num_running=4)) == 3
    assert not spec.may_draft(_Seq([1, 2, 3] * 20), num_running=16)
    assert not spec.may_draft(_Seq([1, 2, 3] * 20), num_running=9)
    assert spec.may_draft(_Seq([1, 2, 3] * 20), num_running=8)


def test_drafts_stop_short_of_max_tokens_and_the_budget():
    spec = _speculator()
    seq = _Seq([1, 2, 1, 2, 1], max_tokens=3)
    assert spec.propose(seq, 64, 1) == [2, 1]  # 2 drafts + the bonus token = max_tokens
    assert spec.propose(_Seq([1, 2, 1, 2, 1]), budget=2, num_running=1) == [2]
    assert spec.propose(_Seq([1, 2, 1, 2, 1]), 64, 1, look_ahead=True) == []
