"""Turn a SchedulerOutput into the padded numpy arrays of one device step (host side, no jax).

Two row spaces: attention rows (sequences that compute tokens this step) and sample rows
(sequences that get a next token). A chunk that ends mid-prompt has an attention row but no sample
row; a fork of an n>1 request has a sample row but no attention row (it reads its leader's
logits). Both are padded to the step's sequence bucket.

With async scheduling a decode row's input token may still be on the device, sampled by the step
before this one: ``prev_rows`` then names that step's sample row, and the device reads the token
there itself.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from jaxserve.config import Config
from jaxserve.engine import prompt_logprobs
from jaxserve.engine.buckets import pick_pair, prompt_logprob_buckets
from jaxserve.engine.constraints import bitmask_words
from jaxserve.engine.scheduler_output import ScheduledSeq, SchedulerOutput
from jaxserve.interfaces import SamplingArrays, StepInputs

MAX_BIAS_ENTRIES = 384  # logit_bias (<= 300), eos/stop ids for min_tokens, bad words' bans
_SUPPRESS = -1e9


class StepInputBuilder:
    def __init__(self, *, token_buckets: list[int], seq_buckets: list[int], page_size: int,
                 max_pages_per_seq: int, max_model_len: int, eos_token_ids: tuple[int, ...],
                 vocab_size: int):
        self.token_buckets = token_buckets
        self.seq_buckets = seq_buckets
        self.page_size = page_size
        self.max_pages_per_seq = max_pages_per_seq
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.bitmask_words = bitmask_words(vocab_size)

    @classmethod
    def for_config(cls, config: Config, *, max_model_len: int, vocab_size: int,
                   eos_token_ids: tuple[int, ...]) -> StepInputBuilder:
        """The engine's builder for a config (eos ids change values, never shapes)."""
        page_size = config.cache.page_size
        return cls(token_buckets=config.scheduler.token_buckets,
                   seq_buckets=config.scheduler.seq_buckets, page_size=page_size,
                   max_pages_per_seq=-(-max_model_len // page_size), max_model_len=max_model_len,
                   eos_token_ids=eos_token_ids, vocab_size=vocab_size)

    def padding_inputs(self, bucket: tuple[int, int], num_steps: int = 1,
                       with_prompt_logprobs: bool = False) -> StepInputs:
        """All-padding inputs of one bucket: the shapes to compile it ahead of time (its
        prompt-logprob program's, with_prompt_logprobs)."""
        return self.build(SchedulerOutput(scheduled=[], num_steps=num_steps), bucket,
                          with_prompt_logprobs=with_prompt_logprobs)

    def build(self, sched: SchedulerOutput, bucket: tuple[int, int] | None = None,
              prev_rows: dict[int, int] | None = None,
              with_prompt_logprobs: bool = False) -> StepInputs:
        """prev_rows: seq_id -> sample row in the step still running, for sequences whose
        last token that step samples. A step whose chunks carry prompt logprobs goes to a
        prompt-logprob bucket with their arrays; so do padding inputs asked with_prompt_logprobs."""
        attn_rows, sample_rows = sched.attention_rows, sched.sample_rows
        num_tokens = sum(s.num_new_tokens for s in attn_rows)
        with_prompt_logprobs = with_prompt_logprobs or sched.num_prompt_logprobs > 0
        if bucket is None and with_prompt_logprobs:
            (bucket,) = prompt_logprob_buckets(self.token_buckets, self.seq_buckets)
        num_sample_slots = sched.sample_row_starts[-1]
        t_pad, s_pad = bucket or pick_pair(self.token_buckets, self.seq_buckets, num_tokens,
                                           max(len(attn_rows), num_sample_slots, 1))
        ps = self.page_size

        input_ids = np.zeros(t_pad, np.int32)
        from_prev = np.full(t_pad, -1, np.int32)
        positions = np.zeros(t_pad, np.int32)
        slot_mapping = np.full(t_pad, -1, np.int32)
        kv_lens = np.zeros(s_pad, np.int32)
        page_table = np.zeros((s_pad, self.max_pages_per_seq), np.int32)
        cu_q_lens = np.full(s_pad + 1, num_tokens, np.int32)
        cu_q_lens[0] = 0
        last_token_row: dict[int, int] = {}
        row_offsets = []  # each attention row's first token row
        offset = 0
        for row, s in enumerate(attn_rows):
            row_offsets.append(offset)
            seq, n = s.seq, s.num_new_tokens
            pos = np.arange(s.start, s.start + n, dtype=np.int32)
            pages = np.asarray(s.seq.pages, np.int32)
            # a verification row's queries: its last token, then the drafts (speculation.py)
            known = seq.token_ids[s.start:s.start + n - len(s.draft_tokens)] + s.draft_tokens
            input_ids[offset:offset + len(known)] = known
            if len(known) < n:  # only the last token can be unknown: the one step N samples
                assert len(known) == n - 1 and seq.num_pending, "a token went missing"
                from_prev[offset + n - 1] = prev_rows[seq.seq_id]
            positions[offset:offset + n] = pos
            slot_mapping[offset:offset + n] = pages[pos // ps] * ps + pos % ps
            kv_lens[row] = s.start + n
            page_table[row, :len(pages)] = pages
            offset += n
            cu_q_lens[row + 1] = offset
            last_token_row[seq.seq_id] = offset - 1

        logits_indices = np.zeros(s_pad, np.int32)
        slots = []  # (row, position j of its verification) of every sample row, in order
        for row, s in zip(sched.sample_row_starts, sample_rows):
            source = s.logits_from or s.seq
            first = last_token_row[source.seq_id] - len(s.draft_tokens)
            for j in range(s.num_sample_slots):
                logits_indices[row + j] = first + j
                slots.append((s, j))

        copies = np.asarray(sched.page_copies, np.int32).reshape(-1, 2)
        return StepInputs(
            bucket=(t_pad, s_pad), input_ids=input_ids, prev_rows=from_prev,
            positions=positions, slot_mapping=slot_mapping, kv_lens=kv_lens, page_table=page_table,
            cu_q_lens=cu_q_lens, num_seqs=np.array([len(attn_rows)], np.int32),
            logits_indices=logits_indices, sampling=self._sampling(slots, s_pad),
            page_copies=copies, num_sample_rows=num_sample_slots, num_steps=sched.num_steps,
            prompt_logprobs=prompt_logprobs.build_arrays(
                sched, row_offsets, prompt_logprobs.capacity(t_pad))
            if with_prompt_logprobs else None,
        )

    def _sampling(self, rows: list[tuple[ScheduledSeq, int]], s_pad: int) -> SamplingArrays:
        """rows: each sample row's scheduled row and position j: a verification row's position j
        samples output index num_sampled + j, as plain decoding would."""
        temperature = np.zeros(s_pad, np.float32)
        top_p = np.ones(s_pad, np.float32)
        top_k = np.zeros(s_pad, np.int32)
        min_p = np.zeros(s_pad, np.float32)
        presence = np.zeros(s_pad, np.float32)
        frequency = np.zeros(s_pad, np.float32)
        repetition = np.ones(s_pad, np.float32)
        bias_ids = np.full((s_pad, MAX_BIAS_ENTRIES), -1, np.int32)
        bias_values = np.zeros((s_pad, MAX_BIAS_ENTRIES), np.float32)
        rng_keys = np.zeros((s_pad, 2), np.uint32)
        rng_steps = np.zeros(s_pad, np.int32)
        num_prompt = np.zeros(s_pad, np.int32)
        any_penalty = False
        penalty_rows = []
        # all bits set: every token allowed; constrained rows get their grammar's mask
        token_bitmask = np.full((s_pad, self.bitmask_words), -1, np.int32)
        any_mask = False
        for row, (s, j) in enumerate(rows):
            seq, p = s.seq, s.seq.params
            num_sampled = seq.num_sampled_tokens + j
            temperature[row] = p.temperature
            top_p[row] = p.top_p
            top_k[row] = max(p.top_k, 0)  # validate() bounds it to int32; the sampler clips to V
            min_p[row] = p.min_p
            presence[row] = p.presence_penalty
            frequency[row] = p.frequency_penalty
            repetition[row] = p.repetition_penalty
            rng_keys[row] = seq.rng_key
            rng_steps[row] = num_sampled
            num_prompt[row] = seq.num_prompt_tokens
            bias = dict(p.logit_bias or {})
            if num_sampled < p.min_tokens:
                for token_id in (*self.eos_token_ids, *p.stop_token_ids):
                    bias[token_id] = _SUPPRESS
            if p.bad_words_token_ids:
                for token_id in bad_word_bans(p.bad_words_token_ids, seq.output_token_ids):
                    bias[token_id] = _SUPPRESS
            if bias:
                ids = list(bias)[:MAX_BIAS_ENTRIES]
                bias_ids[row, :len(ids)] = ids
                bias_values[row, :len(ids)] = [bias[i] for i in ids]
            if seq.constraint is not None:
                seq.constraint.fill_bitmask(token_bitmask, row)
                any_mask = True
            if p.allowed_token_ids is not None:  # a fixed mask, the same every step
                token_bitmask[row] &= allowed_bitmask(tuple(p.allowed_token_ids),
                                                      self.bitmask_words)
                any_mask = True
            if p.has_penalties:
                any_penalty = True
                penalty_rows.append((row, seq))
        # the token history is only read when some row has a penalty; one fixed width keeps a
        # single executable per bucket
        history = np.full((s_pad, self.max_model_len), -1, np.int32)
        for row, seq in penalty_rows:
            history[row, :seq.num_tokens] = seq.token_ids
        return SamplingArrays(
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
            presence_penalty=presence, frequency_penalty=frequency, repetition_penalty=repetition,
            bias_ids=bias_ids, bias_values=bias_values, rng_keys=rng_keys, rng_steps=rng_steps,
            history=history, num_prompt_tokens=num_prompt,
            any_random=np.array(bool((temperature > 0).any())),
            any_filter=np.array(bool(((top_p < 1) | (top_k > 0)).any())),
            any_penalty=np.array(any_penalty),
            token_bitmask=token_bitmask, any_mask=np.array(any_mask),
            any_logprobs=np.array(any(s.seq.params.logprobs is not None for s, _ in rows)),
        )


def bad_word_bans(words: list[list[int]] | None, output: list[int]) -> list[int]:
    """vLLM's bad_words rule: a word's last token is banned when the output ends with the
    word's other tokens (a one-token word always)."""
    bans = []
    for ids in words or ():
        prefix = len(ids) - 1
        if prefix <= len(output) and output[len(output) - prefix:] == ids[:-1]:
            bans.append(ids[-1])
    return bans


@lru_cache(maxsize=256)
def allowed_bitmask(token_ids: tuple[int, ...], num_words: int) -> np.ndarray:  # i32[W]
    """The packed mask that allows exactly token_ids (bit t % 32 of word t // 32)."""
    ids = np.asarray(token_ids, np.int64)
    words = np.zeros(num_words, np.uint32)
    np.bitwise_or.at(words, ids // 32, np.left_shift(np.uint32(1), (ids % 32).astype(np.uint32)))
    words.flags.writeable = False  # cached: shared by every step that reads it
    return words.view(np.int32)
