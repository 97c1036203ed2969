"""Prometheus metrics for ``GET /metrics``, named as vLLM names them but under ``jaxserve:``.

Latency histograms are observed on the engine thread right after each step (it is the only
thread that sees the deltas as they are made). Gauges and counters are read from the engine when
Prometheus scrapes: they are a few ``len()`` and integer reads, atomic under the GIL, so the step
loop pays nothing for them. Each app has its own registry, so tests can build several apps.
"""

from __future__ import annotations

import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from jaxserve.engine.llm_engine import LLMEngine
from jaxserve.hardware import DtypeChoice
from jaxserve.outputs import RequestOutput

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the exposition format generate_latest writes

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                0.5, 0.75, 1.0, 2.5, 5.0)
_E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                60.0, 120.0, 240.0, 480.0)


class _EngineCollector:
    """Gauges and counters read straight from the engine at scrape time."""

    def __init__(self, engine: LLMEngine, model_name: str):
        self.engine = engine
        self.labels = {"model_name": model_name}

    def _family(self, kind, name: str, doc: str, value: float):
        family = kind(name, doc, labels=list(self.labels))
        family.add_metric(list(self.labels.values()), value)
        return family

    def collect(self):
        engine = self.engine
        scheduler = engine.scheduler
        compilations = getattr(engine.runner, "compilations_after_warmup", 0)
        yield self._family(GaugeMetricFamily, "jaxserve:num_requests_running",
                           "Sequences in the running batch.", len(scheduler.running))
        yield self._family(GaugeMetricFamily, "jaxserve:num_requests_waiting",
                           "Sequences waiting to be scheduled.", len(scheduler.waiting))
        yield self._family(GaugeMetricFamily, "jaxserve:kv_cache_usage_perc",
                           "Fraction of KV cache pages in use (1 means full).",
                           engine.allocator.usage)
        yield self._family(CounterMetricFamily, "jaxserve:num_preemptions",
                           "Sequences preempted (their pages freed, to be recomputed).",
                           scheduler.num_preemptions)
        yield self._family(CounterMetricFamily, "jaxserve:prompt_tokens",
                           "Prompt tokens taken by the engine.", engine.stats.prompt_tokens)
        yield self._family(CounterMetricFamily, "jaxserve:generation_tokens",
                           "Tokens generated.", engine.stats.generation_tokens)
        yield self._family(CounterMetricFamily, "jaxserve:compilations_after_warmup",
                           "XLA compilations after start-up (a bucket the warm-up missed).",
                           compilations)
        if engine.speculator is not None:
            yield from self._speculation(engine.speculator.stats)

    def _speculation(self, stats):
        """vLLM's spec_decode counters, and the rates they give."""
        yield self._family(CounterMetricFamily, "jaxserve:spec_decode_num_drafts",
                           "Verification rows run (sequences that drafted, per step).",
                           stats.num_drafts)
        yield self._family(CounterMetricFamily, "jaxserve:spec_decode_num_draft_tokens",
                           "Draft tokens proposed.", stats.num_draft_tokens)
        yield self._family(CounterMetricFamily, "jaxserve:spec_decode_num_accepted_tokens",
                           "Draft tokens accepted.", stats.num_accepted_tokens)
        per_pos = CounterMetricFamily("jaxserve:spec_decode_num_accepted_tokens_per_pos",
                                      "Draft tokens accepted at each draft position.",
                                      labels=[*self.labels, "position"])
        for position, count in enumerate(stats.accepted_per_position):
            per_pos.add_metric([*self.labels.values(), str(position)], count)
        yield per_pos
        drafted = stats.num_draft_tokens
        yield self._family(GaugeMetricFamily, "jaxserve:spec_decode_draft_acceptance_rate",
                           "Accepted over proposed draft tokens, since start.",
                           stats.num_accepted_tokens / drafted if drafted else 0.0)
        yield self._family(GaugeMetricFamily, "jaxserve:spec_decode_mean_acceptance_length",
                           "Tokens a verification row gives on average (1 + accepted drafts).",
                           1 + stats.num_accepted_tokens / stats.num_drafts
                           if stats.num_drafts else 0.0)


class EngineMetrics:
    """Implements ``async_engine.StepObserver``; its hooks run on the engine thread."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self.ttft = self._histogram("jaxserve:time_to_first_token_seconds",
                                    "Time from arrival at the engine to the first token.",
                                    _TTFT_BUCKETS)
        self.itl = self._histogram("jaxserve:inter_token_latency_seconds",
                                   "Time between two successive outputs of a request.",
                                   _ITL_BUCKETS)
        self.e2e = self._histogram("jaxserve:e2e_request_latency_seconds",
                                   "Time from queueing a request to its last token.", _E2E_BUCKETS)
        self._times: dict[str, list[float]] = {}  # request id -> [queued at, last output at]

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]):
        return Histogram(name, doc, ["model_name"], registry=self.registry,
                         buckets=buckets).labels(self.model_name)

    def attach(self, engine: LLMEngine, dtypes: DtypeChoice | None = None) -> None:
        self.registry.register(_EngineCollector(engine, self.model_name))
        if dtypes is not None:  # vLLM's cache_config_info pattern: a constant 1 carrying labels
            info = Gauge("jaxserve:dtype_info", "The dtypes served, and why auto chose them.",
                         ["model_name", "activations", "weights", "kv_cache", "reason"],
                         registry=self.registry)
            info.labels(self.model_name, dtypes.activations, dtypes.weights, dtypes.kv_cache,
                        dtypes.reason).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ---- StepObserver ------------------------------------------------------------------------
    def request_added(self, request_id: str) -> None:
        self._times[request_id] = [time.monotonic(), 0.0]

    def request_aborted(self, request_id: str) -> None:
        self._times.pop(request_id, None)

    def step_done(self, engine: LLMEngine, outputs: list[RequestOutput]) -> None:
        ttfts = engine.stats.ttft_s  # the engine appends, we drain, both on this thread
        for value in ttfts:
            self.ttft.observe(value)
        ttfts.clear()
        now = time.monotonic()
        for out in outputs:
            times = self._times.get(out.request_id)
            if times is None:
                continue
            if times[1]:
                self.itl.observe(now - times[1])
            times[1] = now
            if out.finished:
                self.e2e.observe(now - times[0])
                del self._times[out.request_id]
