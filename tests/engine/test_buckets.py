"""Bucket ladders: every step shape lands in a compiled pair, and the pair list is exact."""

import pytest

from jaxserve.engine.buckets import all_buckets, decode_buckets, pick_bucket, pick_pair, snap_down

LADDERS = [([1, 16, 64, 256], [4, 16]), ([16, 64, 256], [4, 16]), ([16, 64], [8]), ([8, 16], [4])]


@pytest.mark.parametrize("tokens,seqs", LADDERS)
def test_every_step_shape_fits_a_listed_pair(tokens, seqs):
    pairs = set(all_buckets(tokens, seqs))
    reached = set()
    for n in range(tokens[-1] + 1):
        for rows in range(1, seqs[-1] + 1):
            t, s = pick_pair(tokens, seqs, n, rows)
            assert t >= n and s >= rows, (n, rows, t, s)
            reached.add((t, s))
    assert reached == pairs  # nothing compiled that no step can use, nothing missing


def test_lone_decode_gets_a_one_token_bucket_without_a_one_row_rung():
    tokens, seqs = [1, 16, 64, 256], [4, 16]
    assert pick_pair(tokens, seqs, 1, 1) == (1, 1)
    assert pick_pair(tokens, seqs, 1, 2) == (16, 4)  # a fork row needs a wider bucket
    assert pick_pair(tokens, seqs, 100, 1) == (256, 4)
    assert decode_buckets(tokens, seqs, 16) == [(1, 1), (16, 4), (16, 16)]
    assert all_buckets(tokens, seqs) == [(1, 1), (16, 4), (16, 16), (64, 4), (64, 16),
                                         (256, 4), (256, 16)]


def test_pick_bucket_rejects_overflow():
    assert pick_bucket([4, 16], 5) == 16
    with pytest.raises(ValueError, match="exceeds the largest bucket 16"):
        pick_bucket([4, 16], 17)


@pytest.mark.parametrize("n,expected", [
    (387, 384),  # 3 past 384: those 3 wait a step rather than pad 387 up to 512
    (270, 256), (288, 256),  # up to an eighth of the rung below (32 of 256)
    (289, 289), (300, 300),  # further: padding up wins
    (17, 16), (18, 16), (19, 19), (28, 28),  # 16 // 8 = 2
    (384, 384), (1, 1), (3, 3),  # a rung, and nothing below the first rung
])
def test_snap_down_takes_the_rung_below_only_when_just_past_it(n, expected):
    assert snap_down([1, 4, 16, 64, 160, 256, 384, 512], n) == expected
