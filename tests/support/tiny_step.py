"""A tiny-model runner and a 16-token step for the runner tests."""

import numpy as np

from jaxserve.config import load_config
from jaxserve.engine.step_inputs import StepInputBuilder
from jaxserve.runner.model_runner import ModelRunner
from tests.support.configs import TINY_CONFIG


def tiny_runner(model, layers_per_call, program_dir=None):
    config = load_config(TINY_CONFIG)
    return ModelRunner(model, num_pages=config.cache.num_pages, page_size=config.cache.page_size,
                       max_num_seqs=8, max_rows=8, layers_per_call=layers_per_call,
                       program_dir=program_dir)


def tiny_batch(cfg):
    """Three sequences, prefill chunks of 5, 3 and 1 tokens in one 16-token bucket."""
    builder = StepInputBuilder(token_buckets=[16], seq_buckets=[8], page_size=16,
                               max_pages_per_seq=4, max_model_len=64, eos_token_ids=(2,),
                               vocab_size=cfg.vocab_size)
    inputs = builder.padding_inputs((16, 8))
    q_lens = [5, 3, 1]
    offset = 0
    for i, q in enumerate(q_lens):
        inputs.input_ids[offset:offset + q] = np.arange(q) * 11 + 7 * i + 3
        inputs.positions[offset:offset + q] = np.arange(q)
        inputs.slot_mapping[offset:offset + q] = i * 16 + np.arange(q)  # page i
        inputs.page_table[i, 0] = i
        inputs.kv_lens[i] = q
        offset += q
        inputs.cu_q_lens[i + 1:] = offset
        inputs.logits_indices[i] = offset - 1
    inputs.num_seqs[0] = len(q_lens)
    return inputs
