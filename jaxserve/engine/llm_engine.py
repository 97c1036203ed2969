"""The engine: requests in, output deltas out, one step at a time (host side, no jax).

    step = schedule -> run on the device -> postprocess

The device side is a ``Runner`` (``jaxserve.runner.model_runner.ModelRunner`` for a real model, a
fake one in tests): it takes the padded numpy inputs of one step and returns the sampled tokens.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from jaxserve.config import Config
from jaxserve.engine.constraints import ConstraintFactory
from jaxserve.engine.output_processor import OutputProcessor
from jaxserve.engine.page_allocator import PageAllocator
from jaxserve.engine.scheduler import Scheduler, SchedulerOutput
from jaxserve.engine.sequence import Request, Sequence, Status
from jaxserve.engine.step_inputs import MAX_BIAS_ENTRIES, StepInputBuilder, StepInputs
from jaxserve.outputs import RequestOutput, StepLogprobs, TokenLogprob
from jaxserve.sampling_params import SamplingParams


class RequestError(ValueError):
    """A request the engine cannot take; ``code`` follows OpenAI (e.g. context_length_exceeded)."""

    def __init__(self, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


@dataclass
class StepResult:
    tokens: np.ndarray  # i32[K, S]: K = the step's num_steps
    logprobs: np.ndarray  # f32[K, S]
    top_ids: np.ndarray  # i32[K, S, 20]
    top_logprobs: np.ndarray  # f32[K, S, 20]


class Runner(Protocol):
    def execute(self, inputs: StepInputs) -> StepResult: ...


@dataclass
class EngineStats:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    steps: int = 0
    finished_requests: int = 0
    step_time_s: float = 0.0
    ttft_s: list[float] = field(default_factory=list)  # drained by the metrics layer


class LLMEngine:
    def __init__(self, config: Config, runner: Runner, tokenizer, *, max_model_len: int,
                 vocab_size: int, eos_token_ids: tuple[int, ...],
                 constraint_factory: ConstraintFactory | None = None):
        self.config = config
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.constraint_factory = constraint_factory
        cache = config.cache
        self.allocator = PageAllocator(cache.num_pages, cache.page_size,
                                       cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.allocator, max_model_len)
        self.inputs = StepInputBuilder(
            token_buckets=config.scheduler.token_buckets,
            seq_buckets=config.scheduler.seq_buckets,
            page_size=cache.page_size,
            max_pages_per_seq=-(-max_model_len // cache.page_size),
            max_model_len=max_model_len,
            eos_token_ids=eos_token_ids,
            vocab_size=vocab_size,
        )
        self.outputs = OutputProcessor(tokenizer, eos_token_ids, max_model_len)
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats()
        self._seq_ids = itertools.count()
        self._rng = np.random.default_rng(config.model.seed)

    # ---- requests ----------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    params: SamplingParams) -> None:
        if request_id in self.requests:
            raise RequestError(f"request id {request_id!r} is already running", param="request_id")
        params.validate(self.vocab_size)
        if params.n > self.config.scheduler.max_num_seqs:
            raise RequestError(f"n must be at most {self.config.scheduler.max_num_seqs} "
                               f"(max_num_seqs), got {params.n}", param="n")
        if len(params.logit_bias or {}) > 300:
            raise RequestError("logit_bias may hold at most 300 entries", param="logit_bias")
        if len(params.stop_token_ids) > MAX_BIAS_ENTRIES - 300 - len(self.eos_token_ids):
            raise RequestError("too many stop_token_ids", param="stop_token_ids")
        num_prompt = len(prompt_token_ids)
        if num_prompt == 0:
            raise RequestError("the prompt is empty", param="prompt")
        if any(not 0 <= t < self.vocab_size for t in prompt_token_ids):
            raise RequestError(f"prompt token ids must be in [0, {self.vocab_size})", param="prompt")
        room = self.max_model_len - num_prompt
        if room < 1 or (params.max_tokens is not None and params.max_tokens > room):
            asked = num_prompt + (params.max_tokens or 1)
            raise RequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {asked} tokens ({num_prompt} in the messages, "
                f"{params.max_tokens or 1} in the completion). Please reduce the length of the "
                "messages or completion.", code="context_length_exceeded", param="messages")
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        pages = self.allocator.pages_needed(num_prompt + max_tokens)
        if pages > self.config.cache.num_pages:
            raise RequestError(f"the request needs {pages} KV pages but the cache has only "
                               f"{self.config.cache.num_pages}", code="context_length_exceeded")

        constraints = [self._constraint(params) for _ in range(params.n)]
        request = Request(request_id, list(prompt_token_ids), params, max_tokens)
        for index in range(params.n):
            seq = Sequence(seq_id=next(self._seq_ids), request=request, index=index,
                           token_ids=list(prompt_token_ids), num_prompt_tokens=num_prompt,
                           rng_key=self._rng_key(params.seed, index),
                           logprobs=[] if params.logprobs is not None else None,
                           constraint=constraints[index])
            request.seqs.append(seq)
        self.requests[request_id] = request
        self.scheduler.add(request.seqs[0])
        for fork in request.seqs[1:]:
            fork.status = Status.FORK_PENDING
        self.stats.prompt_tokens += num_prompt

    def _constraint(self, params: SamplingParams):
        if params.structured_outputs is None:
            return None
        if self.constraint_factory is None:
            raise RequestError("structured outputs are not available on this engine",
                               param="structured_outputs")
        try:
            return self.constraint_factory(params)
        except ValueError as exc:
            raise RequestError(str(exc), param="response_format") from None

    def _rng_key(self, seed: int | None, index: int) -> np.ndarray:
        if seed is None:
            return self._rng.integers(0, 2**32, size=2, dtype=np.uint32)
        words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, index]
        return np.random.SeedSequence(words).generate_state(2, np.uint32)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        for seq in request.seqs:
            if not seq.is_finished:
                seq.finish_reason = seq.finish_reason or "abort"
                self._release(seq)
        return self._request_output(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- the step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        start = time.perf_counter()
        inputs = self.inputs.build(sched)
        result = self.runner.execute(inputs)
        self.stats.step_time_s += time.perf_counter() - start
        self.stats.steps += 1
        return self.postprocess(sched, inputs, result)

    def postprocess(self, sched: SchedulerOutput, inputs: StepInputs,
                    result: StepResult) -> list[RequestOutput]:
        touched: dict[str, Request] = {}
        now = time.monotonic()
        for row, s in enumerate(inputs.sample_rows):
            seq = s.seq
            if seq.is_finished:  # aborted while the step ran
                continue
            if s.logits_from is not None:
                self.scheduler.fork(s.logits_from, seq)
            for k in range(inputs.num_steps):  # tokens after a stop were computed, then dropped
                if seq.finish_reason is not None:
                    break
                self.outputs.append_token(seq, int(result.tokens[k, row]),
                                          self._logprobs(seq, k, row, result))
                self.stats.generation_tokens += 1
            request = seq.request
            if request.first_token_time is None:
                request.first_token_time = now
                self.stats.ttft_s.append(now - request.arrival_time)
            request.last_token_time = now
            touched[request.request_id] = request
        outputs = []
        for request in touched.values():
            out = self._request_output(request)
            if out is not None:
                outputs.append(out)
            if request.is_finished:
                self.requests.pop(request.request_id, None)
                self.stats.finished_requests += 1
        return outputs

    def _logprobs(self, seq: Sequence, step: int, row: int,
                  result: StepResult) -> StepLogprobs | None:
        k = seq.params.logprobs
        if k is None:
            return None
        ids, lps = result.top_ids[step, row], result.top_logprobs[step, row]
        top = [TokenLogprob(int(ids[j]), float(lps[j])) for j in range(k)]
        return StepLogprobs(int(result.tokens[step, row]), float(result.logprobs[step, row]), top)

    def _release(self, seq: Sequence) -> None:
        if seq.status is Status.FORK_PENDING:
            seq.status = Status.FINISHED
        else:
            self.scheduler.finish(seq)
        self.outputs.release(seq)

    def _request_output(self, request: Request) -> RequestOutput | None:
        completions = []
        for seq in request.seqs:
            if seq.finish_reason is not None and not seq.is_finished:
                self._release(seq)
            final = seq.finish_reason is not None and not seq.finish_emitted
            delta = self.outputs.delta(seq, finished=final)
            seq.finish_emitted |= final
            if delta is not None:
                completions.append(delta)
        if not completions:
            return None
        return RequestOutput(request_id=request.request_id,
                             prompt_token_ids=request.prompt_token_ids, outputs=completions,
                             finished=request.is_finished,
                             num_cached_tokens=request.seqs[0].num_cached_tokens)
