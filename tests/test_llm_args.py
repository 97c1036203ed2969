"""jaxserve.LLM's arguments as vLLM users write them: keywords, a model folder, a config file."""

from __future__ import annotations

import pytest

from jaxserve.config import ConfigError
from jaxserve.llm_args import resolve_config
from jaxserve.sampling_params import SamplingParams
from tests.support.configs import TINY_CONFIG


def test_vllm_keywords_map_to_config_fields(tiny_model_dir):
    config = resolve_config(None, None, {
        "model": str(tiny_model_dir), "dtype": "float32", "max_model_len": 128, "seed": 7,
        "max_num_seqs": 4, "max_num_batched_tokens": 64, "kv_cache_dtype": "bfloat16",
        "served_model_name": ["tiny"], "block_size": 8, "enable_prefix_caching": False,
        "num_gpu_blocks_override": 64})
    assert config.model.path == str(tiny_model_dir) and config.model.model_name == "tiny"
    assert (config.model.dtype, config.model.max_model_len, config.model.seed) == (
        "float32", 128, 7)
    assert (config.scheduler.max_num_seqs, config.scheduler.max_num_batched_tokens) == (4, 64)
    assert (config.cache.dtype, config.cache.page_size, config.cache.num_pages) == (
        "bfloat16", 8, 64)
    assert not config.cache.enable_prefix_caching
    assert resolve_config(None, None, {"dtype": "auto"}).model.dtype == "float32"


def test_a_folder_first_is_the_model_and_a_yaml_first_is_the_config(tiny_model_dir):
    assert resolve_config(tiny_model_dir, None, {}).model.path == str(tiny_model_dir)
    assert resolve_config("smollm2-135m-instruct", None, {}).model.path == "smollm2-135m-instruct"
    from_file = resolve_config(TINY_CONFIG, None, {"model.max_model_len": 64})
    assert from_file.model.path == "tiny-random-llama" and from_file.model.max_model_len == 64
    by_name = resolve_config(None, str(TINY_CONFIG), {"max_num_seqs": 2})
    assert by_name.cache.page_size == 8 and by_name.scheduler.max_num_seqs == 2
    # keywords lay over a built config too; dotted fields win over keywords
    over = resolve_config(from_file, None, {"max_model_len": 32, "model.seed": 3, "seed": 1})
    assert (over.model.max_model_len, over.model.seed, over.cache.page_size) == (32, 3, 8)


def test_unknown_or_doubled_arguments_are_type_errors(tiny_model_dir):
    with pytest.raises(TypeError, match="gpu_memory_utilization"):
        resolve_config(None, None, {"gpu_memory_utilization": 0.9})
    with pytest.raises(TypeError, match="model"):
        resolve_config(tiny_model_dir, None, {"model": "other"})
    with pytest.raises(TypeError, match="config"):
        resolve_config(TINY_CONFIG, TINY_CONFIG, {})
    with pytest.raises(ConfigError, match="model.dtype"):
        resolve_config(None, None, {"dtype": "float64"})
    with pytest.raises(FileNotFoundError):
        resolve_config("configs/missing.yaml", None, {})


def test_llm_from_a_model_folder_with_vllm_keywords(tiny_model_dir):
    from jaxserve import LLM

    llm = LLM(model=str(tiny_model_dir), dtype="float32", max_model_len=128, max_num_seqs=4,
              progress=False, **{"model.attention_backend": "reference",
                                 "scheduler.max_num_batched_tokens": 64,
                                 "scheduler.token_buckets": [16, 64], "scheduler.seq_buckets": [4]})
    assert llm.info.max_model_len == 128 and llm.config.model.path == str(tiny_model_dir)
    (out,) = llm.generate("hello", SamplingParams(max_tokens=3, ignore_eos=True, temperature=0))
    assert len(out.outputs[0].token_ids) == 3
    folder_first = LLM(tiny_model_dir, config=TINY_CONFIG, progress=False)
    assert folder_first.config.model.path == str(tiny_model_dir)
    assert folder_first.config.cache.page_size == 8  # the file's, under the folder's model
