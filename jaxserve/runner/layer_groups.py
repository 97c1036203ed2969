"""One model step as several small executables: embedding, a group of layers, head and sampler.

XLA compiles each bucket's step into one program with every layer unrolled, and on XLA:CPU every
fusion of a program becomes a kernel of its own, most of them the paged attention repeated in
every layer. Each loaded executable costs RSS and start time in proportion to its kernels. With
``model.layers_per_call`` = G
below the layer count, a bucket compiles three programs instead:

- ``embed``: the previous step's token hand-over and the embedding lookup, ``[T] -> [T, hidden]``,
  and the step's rotary cos/sin tables (as arguments of the layer calls they stay computed once;
  inside a program XLA would re-evaluate them in every layer's q and k fusions);
- ``layers``: G decoder layers, called ``num_layers / G`` times per step with each group's own
  weights and K/V caches (donated, so the caches are still updated in place);
- ``head``: the final norm, the LM head on the sampled rows, and the sampler (in a step that
  carries prompt logprobs, ``head_prompt_logprobs``: the same plus runner/prompt_logprobs.py's).

A bucket's prompt-logprob variant shares the bucket's compiled ``embed`` and ``layers`` programs
(the same shapes) and compiles only its own head. The weights are the model's own arrays (no
copy). A call is cheap to dispatch; a step loses the
overlap XLA finds across layer boundaries inside one program but gains the rotary tables computed
once, for a fraction of the program's size (docs/performance.md, ``model.layers_per_call``).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import jax
import numpy as np
from flax import nnx

from jaxserve.models.attention_metadata import AttentionMetadata
from jaxserve.models.llama import LlamaForCausalLM, final_logits, run_layers, step_rope
from jaxserve.runner.handover import keep_last, resolve
from jaxserve.runner.program_cache import ProgramCache
from jaxserve.runner.prompt_logprobs import prompt_logprobs
from jaxserve.runner.sampler import sample

# the layer program's donated argument: its layers' K/V caches, updated in place; named once for
# the jitted program and its stored copy (program_cache.py re-jits it)
LAYERS_KV_ARG = (1,)


class LayerGroups:
    """Lowers and runs one bucket's step as ``embed``, ``num_groups`` x ``layers``, ``head``."""

    def __init__(self, model: LlamaForCausalLM, layers_per_call: int, max_rows: int,
                 programs: ProgramCache, input_sharding=None):
        """input_sharding: where the step's inputs go (a tensor-parallel mesh's replicated
        sharding); None: the default device."""
        assert len(model.layers) % layers_per_call == 0, (len(model.layers), layers_per_call)
        self.per_call = layers_per_call
        self.programs = programs
        self.input_sharding = input_sharding
        layer_def, first = nnx.split(model.layers[0])
        self._layer_def = layer_def  # what every layer's (and every attached layer's) weights fit
        treedef = jax.tree.structure(first)
        embed_def, norm_def = nnx.graphdef(model.embed_tokens), nnx.graphdef(model.norm)
        head_def = None if model.lm_head is None else nnx.graphdef(model.lm_head)
        self.attach_weights(model)

        cfg = model.cfg

        def embed(embed_state, last_tokens, input_ids, prev_rows, positions):
            x = nnx.merge(embed_def, embed_state)(resolve(last_tokens, input_ids, prev_rows))
            return x, step_rope(cfg, positions)  # [T, hidden], (cos, sin) f32[T, D/2] each

        def group_layers(group, kv_caches, x, rope, md):  # x: [T, hidden]
            layers = [nnx.merge(layer_def, jax.tree.unflatten(treedef, w)) for w in group]
            return run_layers(layers, x, rope, kv_caches, md)

        def head(embed_state, norm_state, head_state, x, logits_indices, sm):
            lm_head = None if head_def is None else nnx.merge(head_def, head_state)
            logits = final_logits(nnx.merge(norm_def, norm_state), nnx.merge(embed_def, embed_state),
                                  lm_head, x, logits_indices)  # f32[R, vocab]
            out = sample(logits, sm)
            return out, keep_last(out[0], max_rows)

        def head_prompt_logprobs(embed_state, norm_state, head_state, x, logits_indices, sm, pl):
            out, last = head(embed_state, norm_state, head_state, x, logits_indices, sm)
            lm_head = None if head_def is None else nnx.merge(head_def, head_state)
            scored = prompt_logprobs(nnx.merge(norm_def, norm_state),
                                     nnx.merge(embed_def, embed_state), lm_head, x, pl)
            return (*out, *scored), last

        self._embed = jax.jit(embed)
        self._layers = jax.jit(group_layers, donate_argnums=LAYERS_KV_ARG)
        self._head = jax.jit(head)
        self._head_prompt_logprobs = jax.jit(head_prompt_logprobs)
        # (program, T, S) -> its executable, compiled once for a bucket and its variant
        self._compiled: dict[tuple[str, int, int], Future] = {}
        self._lock = threading.Lock()

    def attach_weights(self, model: LlamaForCausalLM) -> None:
        """Take the model's arrays (or, for lowering only, its ShapeDtypeStructs)."""
        flat = []  # per layer: its weights as a flat tuple (cheap to pass at every call)
        for layer in model.layers:
            graphdef, state = nnx.split(layer)
            assert graphdef == self._layer_def, "every decoder layer must have the same structure"
            flat.append(tuple(jax.tree.leaves(state)))
        self.groups = [tuple(flat[i:i + self.per_call]) for i in range(0, len(flat), self.per_call)]
        self.embed_state = nnx.state(model.embed_tokens)
        self.norm_state = nnx.state(model.norm)
        self.head_state = None if model.lm_head is None else nnx.state(model.lm_head)

    def lower(self, kv_caches, last_tokens, input_ids, prev_rows, positions, md, logits_indices,
              sm, pl=None) -> _Lowered:
        """Arguments as for the whole-model step (shapes or arrays); pl: a step's
        PromptLogprobArrays, for its prompt-logprob variant."""
        lower = self.programs.lower
        embed = lower("embed", self._embed,
                      (self.embed_state, last_tokens, input_ids, prev_rows, positions))
        x, rope = embed.out_info  # the shapes the embedding program hands to the layer calls
        shape = (np.shape(input_ids)[0], np.shape(logits_indices)[0])
        names = ("embed", "group_layers", "head" if pl is None else "head_prompt_logprobs")
        return _Lowered(self, [(name, *shape) for name in names], (
            embed,
            lower("group_layers", self._layers,
                  (self.groups[0], kv_caches[:self.per_call], x, rope, md),
                  donate_argnums=LAYERS_KV_ARG),
            lower("head", self._head,
                  (self.embed_state, self.norm_state, self.head_state, x, logits_indices, sm))
            if pl is None else
            lower("head_prompt_logprobs", self._head_prompt_logprobs,
                  (self.embed_state, self.norm_state, self.head_state, x, logits_indices, sm, pl)),
        ))


    def compile_once(self, key: tuple[str, int, int], lowered):
        """The executable of one program at one shape, compiled by the first thread to ask."""
        with self._lock:
            done = self._compiled.get(key)
            first = done is None
            if first:
                done = self._compiled[key] = Future()
        if first:
            try:
                done.set_result(lowered.compile())
            except BaseException as exc:
                done.set_exception(exc)  # the other threads waiting on it get it too
                raise
        return done.result()


class _Lowered:
    def __init__(self, groups: LayerGroups, keys: list, lowered: tuple):
        self.groups, self.keys, self.lowered = groups, keys, lowered

    def compile(self) -> GroupedStep:
        return GroupedStep(self.groups, *(self.groups.compile_once(key, lowered)
                                          for key, lowered in zip(self.keys, self.lowered)))


class GroupedStep:
    """A compiled bucket; called like the whole-model step, without the model state."""

    def __init__(self, groups: LayerGroups, embed, layers, head):
        self.g, self.embed, self.layers, self.head = groups, embed, layers, head

    def __call__(self, kv_caches: list, last_tokens, input_ids, prev_rows, positions,
                 md: AttentionMetadata, logits_indices, sm, *pl):
        g = self.g
        # what every layer call reads goes to the device once; the embedding's and the head's
        # own inputs go with their one call, since a device_put per input is a cost every step
        md = jax.device_put(md, g.input_sharding)
        x, rope = self.embed(g.embed_state, last_tokens, input_ids, prev_rows, positions)
        new_caches = []
        for i, group in enumerate(g.groups):
            x, caches = self.layers(group, kv_caches[i * g.per_call:(i + 1) * g.per_call], x,
                                    rope, md)
            new_caches.extend(caches)
        outs, last_tokens = self.head(g.embed_state, g.norm_state, g.head_state, x,
                                      logits_indices, sm, *pl)
        return outs, new_caches, last_tokens
