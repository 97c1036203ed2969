"""A tensor-parallel step lowered for CUDA without a GPU, and compiled for the forced CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python -m tests.support.tp_export --model DIR --tp 8

Prints one JSON object: counts of what the CUDA export holds (Triton calls, shard_map regions,
sharded arguments, donated caches) and of the collectives XLA's SPMD partitioner put into the same
step compiled for CPU. Run in a subprocess: the device count is fixed before jax is imported.
"""

from __future__ import annotations

import argparse
import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.engine.step_inputs import StepInputBuilder
from jaxserve.kernels.ragged_paged_attention import ragged_paged_attention, update_kv_pages
from jaxserve.kernels.ragged_paged_attention.export_check import TRITON_CUSTOM_CALL, export_for_cuda
from jaxserve.models.attention_metadata import AttentionBackend
from jaxserve.models.llama_config import LlamaConfig
from jaxserve.runner.attention import make_attention_backend
from jaxserve.runner.model_runner import ModelRunner
from jaxserve.runner.sharding import abstract_sharded_model


def runner_for(model_dir: str, backend: AttentionBackend, tp: int) -> ModelRunner:
    cfg = LlamaConfig.from_hf(model_dir)
    sharded = abstract_sharded_model(model_dir, backend, cfg, tp, "float32", None)
    return ModelRunner(sharded.model, num_pages=64, page_size=16, max_num_seqs=8, max_rows=8,
                       mesh=sharded.mesh)


def step_args(runner: ModelRunner, vocab_size: int) -> tuple:
    builder = StepInputBuilder(token_buckets=[16], seq_buckets=[8], page_size=16,
                               max_pages_per_seq=8, max_model_len=128, eos_token_ids=(2,),
                               vocab_size=vocab_size)
    inputs = builder.padding_inputs((16, 8))

    def spec(x):
        return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                    sharding=runner.input_sharding)

    kv = [runner.kv_spec] * runner.cfg.num_hidden_layers
    last = jax.ShapeDtypeStruct(runner.last_tokens.shape, runner.last_tokens.dtype,
                                sharding=runner.input_sharding)
    return (runner.state, kv, last, *jax.tree_util.tree_map(spec, runner.device_args(inputs)))


def _aliases(hlo: str) -> int:
    """Entries of the compiled module's input_output_alias: buffers updated in place."""
    header = next((line for line in hlo.splitlines() if "input_output_alias=" in line), "")
    return header.split("input_output_alias=", 1)[-1].count("may-alias") if header else 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--tp", type=int, default=8)
    args = p.parse_args()
    cfg = LlamaConfig.from_hf(args.model)
    pallas = AttentionBackend("pallas", functools.partial(ragged_paged_attention, interpret=False),
                              functools.partial(update_kv_pages, interpret=False), jnp.dtype)
    runner = runner_for(args.model, pallas, args.tp)
    text = export_for_cuda(runner.step_fn, *step_args(runner, cfg.vocab_size))
    cpu = runner_for(args.model, make_attention_backend("reference"), args.tp)
    hlo = cpu.step_fn.lower(*step_args(cpu, cfg.vocab_size)).compile().as_text()
    print(json.dumps({
        "triton_calls": text.count(f"stablehlo.custom_call @{TRITON_CUSTOM_CALL}("),
        "shard_map_regions": len(re.findall(r"sdy\.manual_computation|SPMDFullToShardShape", text)),
        "tp_sharded_args": text.count(f"devices=[1,{args.tp}]") + text.count('{"tp"}'),
        # a sharded program marks its donated caches as buffer donors; XLA aliases them
        "donated_args": text.count("jax.buffer_donor") + text.count("tf.aliasing_output"),
        "num_layers": cfg.num_hidden_layers,
        "cpu_all_reduces": len(re.findall(r"\ball-reduce(-start)?\(", hlo)),
        "cpu_aliased_outputs": _aliases(hlo),
        "cpu_num_partitions": int(re.search(r"num_partitions=(\d+)", hlo).group(1))
        if "num_partitions=" in hlo else 1,
    }))


if __name__ == "__main__":
    main()
