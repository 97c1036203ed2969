"""Several processes, one engine: ``jax.distributed`` across hosts, with rank 0 leading.

Every process joins one coordination service (rank 0's ``master_addr:master_port``), sees the
devices of all of them, and builds the same runner over one global mesh, each holding only its
devices' shards of the weights and the K/V cache. Rank 0 alone serves HTTP, schedules and
samples. Before each device call it broadcasts what the call is: a fixed-size header (the bucket,
the decode steps, the page copies) and then the step's padded arrays, as ``jax.experimental``'s
``broadcast_one_to_all`` collective, so every process then makes the same call on its shards
(SPMD) in the same order. The followers return nothing.

The header goes through the coordination service's key-value store, not a collective: a
follower waits there for as long as rank 0 is idle, where a collective would time out, and only
then enters the broadcast of the arrays together with rank 0.

A process that dies stops heartbeating; after ``parallel.heartbeat_timeout`` seconds the
coordination service fails every other process, so a lost follower ends rank 0 loudly instead of
leaving its requests hanging.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxserve.config import ParallelConfig
from jaxserve.interfaces import SamplingArrays, StepInputs

log = logging.getLogger("jaxserve.distributed")

_STOP, _STEP = 0, 1
_KEY = "jaxserve/step/{}"  # the n-th call's header: op, T, S, num_steps, page copies, sample rows
_IDLE_WAIT_MS = 3_600_000  # a follower re-arms its wait this often while rank 0 has no work


def _client():
    from jax._src import distributed  # the coordination service's client, for its key-value store

    return distributed.global_state.client


def initialize(parallel: ParallelConfig) -> None:
    """Join the processes' coordination service; a no-op for one process."""
    if parallel.nnodes == 1 or jax.distributed.is_initialized():
        return
    # on CPU the collectives between processes go over TCP (gloo); GPUs use NCCL regardless
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # its SIGTERM handler would take the signal from the server's drain (entrypoints/server.py)
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(f"{parallel.master_addr}:{parallel.master_port}",
                               num_processes=parallel.nnodes, process_id=parallel.node_rank,
                               heartbeat_timeout_seconds=parallel.heartbeat_timeout)
    log.info("process %d of %d: %d local, %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())


def is_leader() -> bool:
    return jax.process_index() == 0


class StepChannel:
    """Rank 0's steps, sent to the followers; ``template(bucket, num_steps)`` gives the padded
    inputs of a bucket, whose shapes the followers receive into."""

    def __init__(self, template):
        self.template = template
        self.calls = 0  # the same count on every process: the n-th header's key

    def send(self, inputs: StepInputs) -> None:
        self._header([_STEP, *inputs.bucket, inputs.num_steps, len(inputs.page_copies),
                      inputs.num_sample_rows])
        multihost_utils.broadcast_one_to_all(_arrays(inputs))
        # every follower has read this header: each took part in the broadcast after it
        _client().key_value_delete(_KEY.format(self.calls - 1))

    def send_stop(self) -> None:
        self._header([_STOP, 0, 0, 0, 0, 0])

    def _header(self, values: list[int]) -> None:
        _client().key_value_set(_KEY.format(self.calls), ",".join(map(str, values)))
        self.calls += 1

    def receive(self) -> StepInputs | None:
        key = _KEY.format(self.calls)
        while True:
            try:
                text = _client().blocking_key_value_get(key, _IDLE_WAIT_MS)
                break
            except Exception as exc:  # the wait timed out: rank 0 is idle, not gone
                if "DEADLINE_EXCEEDED" not in str(exc):
                    raise
        self.calls += 1
        op, t, s, num_steps, num_copies, num_sample_rows = (int(x) for x in text.split(","))
        if op == _STOP:
            return None
        shape = dataclasses.replace(self.template((t, s), num_steps),
                                    page_copies=np.zeros((num_copies, 2), np.int32),
                                    num_sample_rows=num_sample_rows)
        expected = _arrays(shape)
        received = multihost_utils.broadcast_one_to_all(expected)
        # the broadcast sums over processes, which turns booleans into integers: cast back, so
        # the step is called with the very dtypes its executable was compiled for
        return _from_arrays(shape, [np.asarray(x).astype(e.dtype)
                                    for x, e in zip(received, expected)])


# the array fields a step sends, in order: StepInputs' own (its ints travel in the header), then
# its SamplingArrays'; prompt logprobs are refused across processes (engine/admission.py)
_STEP_ARRAYS = tuple(f.name for f in dataclasses.fields(StepInputs)
                     if f.name not in ("bucket", "sampling", "num_steps", "num_sample_rows",
                                       "prompt_logprobs"))
_SAMPLING_ARRAYS = tuple(f.name for f in dataclasses.fields(SamplingArrays))


def _arrays(inputs: StepInputs) -> tuple:
    return (tuple(np.asarray(getattr(inputs, name)) for name in _STEP_ARRAYS)
            + tuple(getattr(inputs.sampling, name) for name in _SAMPLING_ARRAYS))


def _from_arrays(shape: StepInputs, arrays: list[np.ndarray]) -> StepInputs:
    step = dict(zip(_STEP_ARRAYS, arrays[:len(_STEP_ARRAYS)]))
    sampling = SamplingArrays(**dict(zip(_SAMPLING_ARRAYS, arrays[len(_STEP_ARRAYS):])))
    return dataclasses.replace(shape, sampling=sampling, **step)
