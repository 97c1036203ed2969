"""Tensor parallelism on forced CPU devices: the same tokens as one device, the K/V cache split
over KV heads (repeated when there are fewer than the ranks), zero compilations after warm-up.

jax sees one CPU device unless XLA_FLAGS asks for more before it is imported, so each check runs
``tests/support/tp_parity.py`` in a subprocess with four devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxserve.checkpoints.tiny import write_tiny_model
from jaxserve.config import ConfigError
from jaxserve.models.llama_config import LlamaConfig
from tests.support.configs import ROOT


def parity(model, tp: str, *extra: str, devices: int = 4, timeout: int = 900) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "tests.support.tp_parity", "--model",
                           str(model), "--tp", tp, *extra], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_same_as_one_device(results: dict) -> None:
    one = results["1"]
    for tp, run in results.items():
        assert run["greedy"] == one["greedy"], tp
        assert run["seeded"] == one["seeded"], tp
        for a, b in zip(run["logprobs"] + run["prompt_logprobs"],
                        one["logprobs"] + one["prompt_logprobs"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert run["compilations_after_warmup"] == 0, tp


@pytest.fixture(scope="module")
def gqa_llama(tmp_path_factory):
    """8 query heads over 2 KV heads: split at tp 2, repeated at tp 4."""
    folder = tmp_path_factory.mktemp("llama-8q-2kv")
    write_tiny_model(folder, "llama", num_attention_heads=8, num_key_value_heads=2, head_dim=8)
    return folder


def test_gqa_llama_at_tp2_and_tp4_gives_one_devices_tokens(gqa_llama):
    results = parity(gqa_llama, "1,2,4", "--mixed", "50")
    assert_same_as_one_device(results)
    assert results["1"]["kv_shards"] == [[256, 2, 2, 16, 8]]
    assert results["2"]["kv_shards"] == [[256, 2, 1, 16, 8]] * 2  # one KV head a rank
    assert results["4"]["kv_shape"] == [256, 2, 4, 16, 8]  # each KV head twice
    assert results["4"]["kv_shards"] == [[256, 2, 1, 16, 8]] * 4
    assert len(results["1"]["greedy"]) == 8 and all(len(t) == 32 for t in results["1"]["greedy"])


def test_qwen2_with_biases_and_untied_head_at_tp2(tmp_path):
    write_tiny_model(tmp_path, "qwen2")
    assert_same_as_one_device(parity(tmp_path, "1,2"))


def test_int8_weights_at_tp2_sum_the_same_integer_products(tmp_path):
    """Row-split projections add int32 partial products across ranks, which is exact."""
    write_tiny_model(tmp_path, "qwen2")
    assert_same_as_one_device(parity(tmp_path, "1,2", "--weight-dtype", "int8",
                                     "--prompts", "4", "--tokens", "16"))


def test_layer_groups_under_tp(gqa_llama):
    assert_same_as_one_device(parity(gqa_llama, "1,2", "--layers-per-call", "1",
                                     "--prompts", "3", "--tokens", "12"))


@pytest.mark.slow
def test_smollm2_at_tp3_gives_one_devices_greedy_tokens(smollm2_dir):
    """9 query heads, 3 KV heads: one KV head a rank."""
    results = parity(smollm2_dir, "1,3", "--chat", devices=3, timeout=1800)
    assert results["3"]["greedy"] == results["1"]["greedy"]
    assert results["3"]["kv_shards"][0][2] == 1


def config(**sizes) -> LlamaConfig:
    base = dict(model_type="llama", vocab_size=64, hidden_size=64, intermediate_size=128,
                num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=2, head_dim=8,
                rms_norm_eps=1e-5, rope_theta=1e4, max_position_embeddings=64,
                tie_word_embeddings=True, attention_bias=False)
    return LlamaConfig(**(base | sizes))


def test_head_counts_the_ranks_cannot_split_are_refused_with_the_numbers():
    from jaxserve.runner.sharding import HeadPlan

    assert HeadPlan.for_model(config(), 2) == HeadPlan(2, 2, 1)
    assert HeadPlan.for_model(config(), 8) == HeadPlan(8, 8, 4)
    with pytest.raises(ConfigError, match="3 must divide the model's 8 attention heads"):
        HeadPlan.for_model(config(), 3)
    with pytest.raises(ConfigError, match="4 must divide the model's 3 KV heads"):
        HeadPlan.for_model(config(num_attention_heads=12, num_key_value_heads=3), 4)
    with pytest.raises(ConfigError, match="intermediate size 100"):
        HeadPlan.for_model(config(intermediate_size=100), 8)


def test_more_ranks_than_devices_is_refused():
    import jax

    from jaxserve.runner.sharding import make_mesh

    n = len(jax.devices())
    with pytest.raises(ConfigError, match=f"{n + 1} exceeds the {n} cpu devices"):
        make_mesh(n + 1)


def test_weights_split_megatron_style():
    from jax.sharding import PartitionSpec as P

    from jaxserve.runner.sharding import AXIS, param_spec

    def path(*keys):
        return tuple(type("K", (), {"key": k})() for k in keys)

    assert param_spec(path("layers", 0, "self_attn", "q_proj", "kernel"), 2) == P(None, AXIS)
    assert param_spec(path("layers", 0, "self_attn", "k_proj", "bias"), 1) == P(AXIS)
    assert param_spec(path("layers", 0, "self_attn", "o_proj", "kernel"), 2) == P(AXIS, None)
    assert param_spec(path("layers", 0, "mlp", "down_proj", "kernel"), 2) == P(AXIS, None)
    assert param_spec(path("layers", 0, "mlp", "up_proj", "kernel"), 2) == P(None, AXIS)
    assert param_spec(path("embed_tokens", "embedding"), 2) == P(None, None)
    assert param_spec(path("layers", 0, "input_layernorm", "scale"), 1) == P(None)


def test_tp8_step_exports_for_cuda_with_its_collectives(tmp_path):
    """The Pallas kernels lower to Triton inside shard_map at tp 8 (head_dim 16: Triton tiles),
    the donated caches stay donated, and the same step compiled for 8 CPU devices holds the
    Megatron all-reduces: one after attention and one after the MLP, per layer."""
    write_tiny_model(tmp_path, "llama", num_attention_heads=8, num_key_value_heads=2,
                     head_dim=16, hidden_size=128)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=str(ROOT), JAXSERVE_COMPILE_CACHE="off")
    done = subprocess.run([sys.executable, "-m", "tests.support.tp_export", "--model",
                           str(tmp_path), "--tp", "8"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    layers = found["num_layers"]
    assert found["triton_calls"] == 2  # attention and the K/V write, in functions all layers call
    assert found["shard_map_regions"] >= 2
    assert found["tp_sharded_args"] > 0
    assert found["donated_args"] == layers and found["cpu_aliased_outputs"] == layers
    assert found["cpu_num_partitions"] == 8 and found["cpu_all_reduces"] == 2 * layers


def test_tensor_parallel_size_flag_and_config():
    """-tp / --tensor-parallel-size (vLLM's flags) on run and generate set
    parallel.tensor_parallel_size; a size below 1 is a config error naming the field."""
    from jaxserve.cli import config_from_args, parser
    from jaxserve.config import load_config
    from tests.support.configs import TINY_CONFIG

    run = ["run", "--config", str(TINY_CONFIG)]
    generate = ["generate", "--config", str(TINY_CONFIG), "--prompt", "hi"]
    for flags in ([*run, "-tp", "2"], [*generate, "--tensor-parallel-size", "2"]):
        assert config_from_args(parser().parse_args(flags)).parallel.tensor_parallel_size == 2
    assert config_from_args(parser().parse_args(run)).parallel.tensor_parallel_size == 1
    with pytest.raises(ConfigError, match="parallel.tensor_parallel_size: must be at least 1"):
        load_config(TINY_CONFIG, {"parallel.tensor_parallel_size": 0})


def test_multihost_flags_and_config():
    """vLLM's --nnodes, --node-rank, --master-addr and --master-port set the parallel section;
    a rank outside [0, nnodes) is a config error naming the field."""
    from jaxserve.cli import config_from_args, parser
    from jaxserve.config import load_config
    from tests.support.configs import TINY_CONFIG

    flags = ["run", "--config", str(TINY_CONFIG), "--nnodes", "2", "--node-rank", "1",
             "--master-addr", "10.0.0.1", "--master-port", "29501"]
    parallel = config_from_args(parser().parse_args(flags)).parallel
    assert (parallel.nnodes, parallel.node_rank, parallel.master_addr,
            parallel.master_port) == (2, 1, "10.0.0.1", 29501)
    with pytest.raises(ConfigError, match=r"parallel.node_rank: must be in \[0, 2\), got 2"):
        load_config(TINY_CONFIG, {"parallel.nnodes": 2, "parallel.node_rank": 2})
