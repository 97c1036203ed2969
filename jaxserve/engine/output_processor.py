"""Append sampled tokens to sequences: detokenize, check stop conditions, build output deltas
(host side, no jax).

Detokenization is incremental through ``tokenizers``' ``DecodeStream``, which buffers a token that
ends inside a multi-byte UTF-8 character until the character is whole, so no broken character is
ever emitted. While stop strings are pending, the last ``len(longest stop) - 1`` characters are
held back so a stop string that arrives split across tokens is never streamed out.
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream

from jaxserve.engine.sequence import Sequence
from jaxserve.outputs import CompletionOutput, StepLogprobs

_PREFIX_CONTEXT = 4  # prompt tokens fed to the decoder first, so a leading space decodes right


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_ids: tuple[int, ...], max_model_len: int):
        self.backend_tokenizer = tokenizer.backend_tokenizer  # the Rust tokenizers.Tokenizer
        self.eos_token_ids = set(eos_token_ids)
        self.max_model_len = max_model_len
        self.streams: dict[int, DecodeStream] = {}

    def _stream(self, seq: Sequence) -> DecodeStream:
        stream = self.streams.get(seq.seq_id)
        if stream is None:
            prefix = seq.token_ids[max(0, seq.num_prompt_tokens - _PREFIX_CONTEXT):seq.num_prompt_tokens]
            stream = DecodeStream(ids=prefix, skip_special_tokens=seq.params.skip_special_tokens)
            self.streams[seq.seq_id] = stream
        return stream

    def append_token(self, seq: Sequence, token_id: int, logprobs: StepLogprobs | None) -> None:
        """Add one sampled token to seq and decide whether it finishes the sequence."""
        params = seq.params
        seq.token_ids.append(token_id)
        if seq.constraint is not None:
            seq.constraint.accept_token(token_id)
        if logprobs is not None:
            if seq.logprobs is None:
                seq.logprobs = []
            seq.logprobs.append(logprobs)
        min_reached = seq.num_output_tokens >= params.min_tokens
        if min_reached and not params.ignore_eos and token_id in self.eos_token_ids:
            self._finish(seq, "stop", None)
        elif min_reached and token_id in params.stop_token_ids:
            self._finish(seq, "stop", token_id)
        else:
            text = self._stream(seq).step(self.backend_tokenizer, token_id)
            if text:
                self._add_text(seq, text)
        if not seq.finish_reason and seq.constraint is not None and seq.constraint.is_terminated():
            self._finish(seq, "stop", None)
        if not seq.finish_reason:
            if seq.num_output_tokens >= seq.request.max_tokens or seq.num_tokens >= self.max_model_len:
                self._finish(seq, "length", None)

    def _add_text(self, seq: Sequence, text: str) -> None:
        params = seq.params
        old_len = len(seq.output_text)
        seq.output_text += text
        if not params.stop or seq.num_output_tokens <= params.min_tokens - 1:
            return
        longest = max(len(s) for s in params.stop)
        search_from = max(0, old_len - longest + 1)
        hits = [(seq.output_text.find(s, search_from), s) for s in params.stop]
        hits = [(i, s) for i, s in hits if i >= 0]
        if hits:
            where, stop = min(hits)
            end = where + len(stop) if params.include_stop_str_in_output else where
            seq.output_text = seq.output_text[:end]
            self._finish(seq, "stop", stop)

    @staticmethod
    def _finish(seq: Sequence, reason: str, stop_reason: str | int | None) -> None:
        seq.finish_reason = reason
        seq.stop_reason = stop_reason

    def delta(self, seq: Sequence, finished: bool) -> CompletionOutput | None:
        """What seq produced since its last delta; None when there is nothing new to say."""
        holdback = 0
        if seq.params.stop and not finished:
            holdback = max(len(s) for s in seq.params.stop) - 1
        text_end = max(seq.num_emitted_chars, len(seq.output_text) - holdback)
        text = seq.output_text[seq.num_emitted_chars:text_end]
        new_tokens = seq.output_token_ids[seq.num_emitted_tokens:]
        if not text and not new_tokens and not finished:
            return None
        logprobs = None
        if seq.logprobs is not None:
            logprobs = seq.logprobs[seq.num_emitted_tokens:]
        seq.num_emitted_chars = text_end
        seq.num_emitted_tokens = seq.num_output_tokens
        return CompletionOutput(
            index=seq.index, text=text, token_ids=new_tokens, logprobs=logprobs,
            finish_reason=seq.finish_reason if finished else None,
            stop_reason=seq.stop_reason if finished else None,
            num_output_tokens=seq.num_output_tokens,
        )

    def release(self, seq: Sequence) -> None:
        self.streams.pop(seq.seq_id, None)
