"""The engine: requests in, output deltas out, one step at a time (host side, no jax).

    step = schedule -> launch on the device -> fetch the sampled tokens -> postprocess

The device side is a ``Runner`` (``jaxserve/interfaces.py``): ``launch`` takes the padded numpy
inputs of one step and returns at once, ``fetch`` waits for the step's sampled tokens. Which
sequence owns which row stays here, in the ``SchedulerOutput`` kept beside the launched step.

With async scheduling, a step is launched before the previous one is fetched, so the host's
scheduling, input building and output processing overlap the device's work:

    host:   schedule N+1 | launch N+1 | fetch N | postprocess N | schedule N+2 | launch N+2 | ...
    device: ......... step N ..........| ............ step N+1 ...............| ... step N+2

Step N+1's decode rows take their input token from step N's output on the device. A sequence that
step N finishes (a stop string, eos) has one more token computed in N+1 and dropped. The engine
goes back to one step at a time when step N has a row whose next step the host must prepare from
its token: a grammar's mask, a penalty's history, an n>1 fork.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from jaxserve.config import Config
from jaxserve.engine import prompt_logprobs
from jaxserve.engine.admission import Admission, AdmittedRequest, EngineLimits
from jaxserve.engine.constraints import ConstraintFactory
from jaxserve.engine.output_processor import OutputProcessor
from jaxserve.engine.page_allocator import PageAllocator
from jaxserve.engine.scheduler import ScheduledSeq, Scheduler, SchedulerOutput
from jaxserve.engine.sequence import Request, Sequence, Status
from jaxserve.engine.speculation import Speculator
from jaxserve.engine.step_inputs import StepInputBuilder
from jaxserve.interfaces import Runner, StepInputs, StepResult
from jaxserve.outputs import RequestOutput, StepLogprobs, TokenLogprob
from jaxserve.sampling_params import ParamError


@dataclass
class _Launched:
    sched: SchedulerOutput
    inputs: StepInputs
    handle: object
    start: float


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
                 constraint_factory: ConstraintFactory | None = None,
                 inputs: StepInputBuilder | None = None):
        """inputs: the step input builder the runner's buckets were lowered from, if any."""
        self.config = config
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        cache = config.cache
        # the checks a request passes before add_request, run by the caller on its own thread
        self.admission = Admission(EngineLimits(
            vocab_size=vocab_size, max_model_len=max_model_len,
            max_num_seqs=config.scheduler.max_num_seqs, page_size=cache.page_size,
            num_pages=cache.num_pages, eos_token_ids=tuple(eos_token_ids),
            prompt_logprobs=config.parallel.nnodes == 1), constraint_factory)
        self.allocator = PageAllocator(cache.num_pages, cache.page_size,
                                       cache.enable_prefix_caching)
        spec = config.scheduler.speculative_config
        self.speculator = None if spec is None else Speculator(
            spec, max_model_len, config.scheduler.seq_buckets[-1])
        self.scheduler = Scheduler(config.scheduler, self.allocator, max_model_len,
                                   self.speculator)
        self.inputs = inputs or StepInputBuilder.for_config(
            config, max_model_len=max_model_len, vocab_size=vocab_size,
            eos_token_ids=eos_token_ids)
        self.inputs.eos_token_ids = eos_token_ids
        self.outputs = OutputProcessor(tokenizer, eos_token_ids, max_model_len)
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats()
        self._seq_ids = itertools.count()
        self._rng = np.random.default_rng(config.model.seed)
        self._in_flight: _Launched | None = None

    # ---- requests ----------------------------------------------------------------------------
    def add_request(self, request_id: str, admitted: AdmittedRequest) -> None:
        """Take a request that passed ``self.admission`` (on the caller's thread): its checks,
        its grammar and its constraints are done, so only the id, which needs the engine's
        state, is checked here."""
        if request_id in self.requests:
            raise ParamError(f"request id {request_id!r} is already running", param="request_id")
        params = admitted.params
        prompt = admitted.prompt_token_ids
        request = Request(request_id, list(prompt), params, admitted.max_tokens)
        if params.prompt_logprobs is not None:
            request.prompt_logprobs = [None]  # the first token has no context to predict it
        for index, constraint in enumerate(admitted.constraints):
            seq = Sequence(seq_id=next(self._seq_ids), request=request, index=index,
                           token_ids=list(prompt), num_prompt_tokens=len(prompt),
                           rng_key=self._rng_key(params.seed, index),
                           logprobs=[] if params.logprobs is not None else None,
                           constraint=constraint)
            request.seqs.append(seq)
        self.requests[request_id] = request
        self.scheduler.add(request.seqs[0])
        for fork in request.seqs[1:]:
            fork.status = Status.FORK_PENDING
        self.stats.prompt_tokens += len(prompt)

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
        # a step still in flight with no request left holds only finished rows: the next step()
        # fetches and drops it
        return bool(self.requests)

    # ---- the step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Fetch and postprocess one step; with async scheduling, first launch the next one."""
        step, self._in_flight = self._in_flight, None
        if step is None:
            step = self._launch(self.scheduler.schedule(), {})
            if step is None:
                return []
        if self.config.scheduler.async_scheduling and self._can_look_ahead(step.sched):
            rows = {s.seq.seq_id: row for row, s in zip(step.sched.sample_row_starts,
                                                        step.sched.sample_rows)}
            self._in_flight = self._launch(self.scheduler.schedule(look_ahead=True), rows)
        result = self.runner.fetch(step.handle)
        self.stats.step_time_s += time.perf_counter() - step.start
        self.stats.steps += 1
        return self.postprocess(step.sched, step.inputs, result)

    def _launch(self, sched: SchedulerOutput, prev_rows: dict[int, int]) -> _Launched | None:
        if sched.is_empty:
            return None
        start = time.perf_counter()
        inputs = self.inputs.build(sched, prev_rows=prev_rows)
        for s in sched.sample_rows:
            s.seq.num_pending += inputs.num_steps
        return _Launched(sched, inputs, self.runner.launch(inputs), start)

    def _can_look_ahead(self, sched: SchedulerOutput) -> bool:
        """Whether the step after this one can be built before this one's tokens are known: not
        when the host must prepare a row from its token, nor when a row verifies drafts (its
        length is known only once they are accepted) or would look some up next."""
        if sched.has_drafts:
            return False
        spec, num_running = self.speculator, len(self.scheduler.running)
        return not any(s.logits_from is not None or s.seq.host_feeds_each_step
                       or (spec is not None and spec.may_draft(s.seq, num_running))
                       for s in sched.sample_rows)

    def postprocess(self, sched: SchedulerOutput, inputs: StepInputs,
                    result: StepResult) -> list[RequestOutput]:
        touched: dict[str, Request] = {}
        now = time.monotonic()
        if result.prompt_logprobs is not None:
            prompt_logprobs.collect(sched, result.prompt_logprobs)
        for row, s in zip(sched.sample_row_starts, sched.sample_rows):
            seq = s.seq
            seq.num_pending -= inputs.num_steps
            if seq.is_finished:  # aborted or stopped while the step ran
                continue
            if s.logits_from is not None:
                self.scheduler.fork(s.logits_from, seq)
            if s.draft_tokens:
                self._verify(s, row, result)
            else:  # tokens after a stop were computed, then dropped
                for k in range(inputs.num_steps):
                    if seq.finish_reason is not None:
                        break
                    self._append(seq, k, row, result)
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

    def _verify(self, s: ScheduledSeq, row: int, result: StepResult) -> None:
        """A verification row's tokens: its samples while each equals the draft it follows,
        and the first one that does not; then the rejected drafts' K/V are rolled back."""
        seq, drafts = s.seq, s.draft_tokens
        accepted = 0
        for j in range(len(drafts) + 1):
            if seq.finish_reason is not None:
                break
            token = self._append(seq, 0, row + j, result)
            if j == len(drafts) or token != drafts[j]:
                break
            accepted += 1
        self.speculator.accepted(seq, drafts, accepted)
        if seq.finish_reason is None:
            self.scheduler.roll_back(seq, s.start + 1 + accepted)

    def _append(self, seq: Sequence, step: int, row: int, result: StepResult) -> int:
        """Give seq the token sample row ``row`` drew at decode step ``step``; returns it."""
        token = int(result.tokens[step, row])
        self.outputs.append_token(seq, token, self._logprobs(seq, step, row, result))
        self.stats.generation_tokens += 1
        return token

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
        prompt_lps = request.prompt_logprobs
        if prompt_lps is not None and (request.prompt_logprobs_emitted
                                       or len(prompt_lps) < request.num_prompt_tokens):
            prompt_lps = None  # sent once, whole, in the first output that has them all
        if prompt_lps is not None:
            prompt_lps = list(prompt_lps)  # the output crosses to the server's thread
            request.prompt_logprobs_emitted = True
        return RequestOutput(request_id=request.request_id,
                             prompt_token_ids=request.prompt_token_ids, outputs=completions,
                             finished=request.is_finished,
                             num_cached_tokens=request.seqs[0].num_cached_tokens,
                             prompt_logprobs=prompt_lps)
