"""What crosses the line between host and device, and what the engine tells the server (no jax).

The engine builds a ``StepInputs`` of plain numpy arrays, padded to a compiled bucket; a
``Runner`` runs it and gives back a ``StepResult``. Host bookkeeping (which sequence owns which
row) never crosses: the engine keeps it beside the step it launched. The runner registers
``SamplingArrays`` as a pytree, so the same object is the sampler's argument on the device.

Shapes: T = the step's token bucket, S = its sequence bucket, P = pages per sequence,
L = max_model_len, B = bias entries per row, W = ceil(vocab / 32), C = page copies, K = the
step's decode steps, Q = prompt-logprob positions a step can carry (``PromptLogprobArrays``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from jaxserve.hardware import DtypeChoice


@dataclass(frozen=True)
class SamplingArrays:
    """Per-row sampling parameters as arrays, so new values never cause a recompile."""

    temperature: np.ndarray  # f32[S]: 0 means greedy
    top_p: np.ndarray  # f32[S]: 1 disables
    top_k: np.ndarray  # i32[S]: 0 disables
    min_p: np.ndarray  # f32[S]: 0 disables
    presence_penalty: np.ndarray  # f32[S]
    frequency_penalty: np.ndarray  # f32[S]
    repetition_penalty: np.ndarray  # f32[S]: 1 disables
    bias_ids: np.ndarray  # i32[S, B]: token ids to bias (logit_bias, min_tokens); -1 pads
    bias_values: np.ndarray  # f32[S, B]
    rng_keys: np.ndarray  # u32[S, 2]: threefry key data of each sample's own random stream
    rng_steps: np.ndarray  # i32[S]: output index, folded into the key so a draw never repeats
    history: np.ndarray  # i32[S, L]: prompt then output ids, -1 pads (read only for penalties)
    num_prompt_tokens: np.ndarray  # i32[S]: history[:, :num_prompt_tokens] is the prompt
    any_random: np.ndarray  # bool[]: some row samples (temperature > 0)
    any_filter: np.ndarray  # bool[]: some row uses top_p or top_k (needs a sort)
    any_penalty: np.ndarray  # bool[]: some row uses a penalty (needs token counts)
    token_bitmask: np.ndarray  # i32[S, W]: bit t % 32 of word t // 32 allows token t
    any_mask: np.ndarray  # bool[]: some row is constrained by a grammar
    any_logprobs: np.ndarray  # bool[]: some row wants logprobs


@dataclass(frozen=True)
class PromptLogprobArrays:
    """The prompt positions whose next prompt token's logprob a step computes, packed first.

    Only a step that carries them has these, and it runs its bucket's prompt-logprob program
    (``runner/prompt_logprobs.py``); every other step runs the ordinary one.
    """

    token_rows: np.ndarray  # i32[Q]: the step's token row of each position; 0 pads
    targets: np.ndarray  # i32[Q]: the prompt token that follows it; 0 pads
    num_positions: np.ndarray  # i32[1]: positions in use; the rest of Q pads


@dataclass(frozen=True)
class StepInputs:
    """One device step, padded to its bucket.

    Two row spaces share S: attention rows (sequences that compute tokens this step) and sample
    rows (sequences that get a next token). With async scheduling a decode row's input token may
    still be on the device: ``prev_rows`` then names the previous step's sample row holding it.
    """

    bucket: tuple[int, int]  # (T, S)
    input_ids: np.ndarray  # i32[T]
    prev_rows: np.ndarray  # i32[T]: -1, or the previous step's sample row holding this token
    positions: np.ndarray  # i32[T]
    slot_mapping: np.ndarray  # i32[T]: page * page_size + offset of each token's K/V; -1 pads
    kv_lens: np.ndarray  # i32[S]: tokens in each attention row's cache after the step
    page_table: np.ndarray  # i32[S, P]
    cu_q_lens: np.ndarray  # i32[S + 1]: attention row r's tokens are [cu_q_lens[r], [r + 1])
    num_seqs: np.ndarray  # i32[1]: real attention rows
    logits_indices: np.ndarray  # i32[S]: the token row whose logits each sample row reads
    sampling: SamplingArrays
    page_copies: np.ndarray  # i32[C, 2]: (src, dst) pages to copy before the step
    num_sample_rows: int = 0  # sample rows in use; the rest of S pads
    num_steps: int = 1  # K: decode steps the device runs before returning (decode-only)
    prompt_logprobs: PromptLogprobArrays | None = None  # set only on steps that compute them


@dataclass(frozen=True)
class PromptLogprobResult:
    """Per position of the step's ``PromptLogprobArrays``: the target's logprob and rank, and the
    top 20 (rows past ``num_positions`` are padding)."""

    logprobs: np.ndarray  # f32[Q]
    ranks: np.ndarray  # i32[Q]: 1 + tokens with a higher logprob than the target (vLLM's rank)
    top_ids: np.ndarray  # i32[Q, 20]
    top_logprobs: np.ndarray  # f32[Q, 20]


@dataclass(frozen=True)
class StepResult:
    tokens: np.ndarray  # i32[K, S]
    logprobs: np.ndarray  # f32[K, S]: of each sampled token
    top_ids: np.ndarray  # i32[K, S, 20]
    top_logprobs: np.ndarray  # f32[K, S, 20]
    prompt_logprobs: PromptLogprobResult | None = None  # when the step's inputs asked


class Runner(Protocol):
    """The device side of the engine: ``ModelRunner`` for a real model, fakes in tests."""

    def launch(self, inputs: StepInputs) -> object:
        """Start the step and return at once with a handle for fetch. Steps run in launch
        order."""

    def fetch(self, handle: object) -> StepResult:
        """Wait for a launched step's sampled tokens (the step's one device-to-host copy)."""


@dataclass(frozen=True)
class EngineInfo:
    """What the server shows of a built engine."""

    model_dir: Path
    model_name: str
    max_model_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    attention_backend: str
    load_seconds: float
    compile_seconds: float
    dtypes: DtypeChoice | None = None  # what auto resolved to, and why (hardware.py)
