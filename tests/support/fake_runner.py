"""A runner with hand-computable outputs (JetStream's mock engine idea): the next token of a
sequence is (its last input token + 1) mod 200, so tests can predict every token without a model.
A prompt position's logprob is -(its input token + the target token / 1000), so a test can tell
both the row and the target the engine sent; its rank is the target + 1."""

from __future__ import annotations

import numpy as np

from jaxserve.interfaces import PromptLogprobResult, StepInputs, StepResult


class FakeRunner:
    def __init__(self):
        self.steps: list[StepInputs] = []
        self.compilations_after_warmup = 0
        self.last_tokens = np.zeros(64, np.int32)  # as on the device: the last step's tokens

    # the engine's interface: a step runs at launch, as the device would, in launch order
    def launch(self, inputs: StepInputs) -> StepResult:
        return self.execute(inputs)

    def fetch(self, result: StepResult) -> StepResult:
        return result

    def execute(self, inputs: StepInputs) -> StepResult:
        self.steps.append(inputs)
        s_pad, k = inputs.bucket[1], inputs.num_steps
        input_ids = np.where(inputs.prev_rows >= 0,
                             self.last_tokens[np.maximum(inputs.prev_rows, 0)], inputs.input_ids)
        last_tokens = input_ids[inputs.logits_indices]  # i32[S]
        # K steps feed each token back in: step j yields last + 1 + j
        tokens = np.stack([(last_tokens + 1 + j) % 200 for j in range(k)]).astype(np.int32)
        top_ids = np.tile(np.arange(20, dtype=np.int32), (k, s_pad, 1))
        self.last_tokens[:] = 0
        self.last_tokens[:s_pad] = tokens[-1]
        return StepResult(tokens, np.full((k, s_pad), -0.5, np.float32), top_ids,
                          np.full((k, s_pad, 20), -1.0, np.float32),
                          self._prompt_logprobs(inputs, input_ids))

    @staticmethod
    def _prompt_logprobs(inputs: StepInputs, input_ids: np.ndarray) -> PromptLogprobResult | None:
        pl = inputs.prompt_logprobs
        if pl is None:
            return None
        q = len(pl.token_rows)
        logprobs = -(input_ids[pl.token_rows] + pl.targets / 1000).astype(np.float32)  # f32[Q]
        return PromptLogprobResult(logprobs, (pl.targets + 1).astype(np.int32),
                                   np.tile(np.arange(20, dtype=np.int32), (q, 1)),
                                   np.full((q, 20), -1.0, np.float32))


class ScriptedRunner(FakeRunner):
    """Every sample row gets the next token of a fixed script, one per step."""

    def __init__(self, script: list[int]):
        super().__init__()
        self.script = list(script)

    def execute(self, inputs: StepInputs) -> StepResult:
        result = super().execute(inputs)
        if inputs.num_sample_rows:
            for k in range(inputs.num_steps):
                result.tokens[k] = self.script.pop(0) if self.script else 0
            self.last_tokens[:inputs.bucket[1]] = result.tokens[-1]
        return result
