"""Lowered programs kept on disk (runner/program_cache.py): a second start lowers them without
tracing, and runs exactly what a traced program runs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve.models.loader import load_model
from jaxserve.runner.attention import make_attention_backend
from jaxserve.runner.program_cache import ProgramCache, describe_function
from tests.support.tiny_step import tiny_batch, tiny_runner

traces = []


@functools.partial(jax.jit, donate_argnums=(0,))
def _update(state, inputs):  # state: {"a": f32[N]}; inputs: (f32[N], i32[])
    traces.append(1)
    x, k = inputs
    return {"a": state["a"] * 2 + x}, [x.sum() + k]


def _args(n=4):
    return {"a": jnp.arange(n, dtype=jnp.float32)}, (jnp.ones(n), jnp.int32(3))


def test_second_lowering_loads_the_program_without_tracing(tmp_path):
    first = ProgramCache(tmp_path, "ctx")
    exe1 = first.lower("update", _update, _args(), donate_argnums=(0,)).compile()
    assert (first.hits, first.misses) == (0, 1)
    traced = len(traces)
    second = ProgramCache(tmp_path, "ctx")  # a new start
    lowered = second.lower("update", _update, _args(), donate_argnums=(0,))
    assert (second.hits, second.misses) == (1, 0)
    assert len(traces) == traced  # not traced again
    assert lowered.out_info[0]["a"].shape == (4,)
    exe2 = lowered.compile()
    state, inputs = _args()
    out1 = exe1(state, inputs)
    assert state["a"].is_deleted()  # still donated through the flat call
    state, inputs = _args()
    out2 = exe2(state, inputs)
    assert state["a"].is_deleted()
    np.testing.assert_array_equal(out1[0]["a"], out2[0]["a"])
    np.testing.assert_array_equal(out1[1][0], out2[1][0])
    np.testing.assert_array_equal(out2[0]["a"], np.arange(4) * 2 + 1)


@pytest.mark.parametrize("change", ["shape", "dtype", "context", "name"])
def test_key_covers_shapes_dtypes_context_and_name(tmp_path, change):
    cache = ProgramCache(tmp_path, "ctx")
    base = cache.key("update", _args())
    if change == "shape":
        other = cache.key("update", _args(5))
    elif change == "dtype":
        state, (x, k) = _args()
        other = cache.key("update", (state, (x.astype(jnp.bfloat16), k)))
    elif change == "context":
        other = ProgramCache(tmp_path, "ctx2").key("update", _args())
    else:
        other = cache.key("other", _args())
    assert other != base
    assert cache.key("update", _args()) == base


def test_a_damaged_file_is_rebuilt(tmp_path):
    ProgramCache(tmp_path, "ctx").lower("update", _update, _args())
    (path,) = tmp_path.glob("update-*.exported")
    path.write_bytes(b"not a flatbuffer")
    cache = ProgramCache(tmp_path, "ctx")
    exe = cache.lower("update", _update, _args()).compile()
    assert (cache.hits, cache.misses) == (0, 1)
    np.testing.assert_array_equal(exe(*_args())[0]["a"], np.arange(4) * 2 + 1)
    assert ProgramCache(tmp_path, "ctx").lower("update", _update, _args()) is not None
    assert path.read_bytes() != b"not a flatbuffer"


def test_no_directory_lowers_from_the_trace():
    cache = ProgramCache(None, "ctx")
    traced = len(traces)
    jax.clear_caches()
    cache.lower("update", _update, _args())
    assert len(traces) == traced + 1 and (cache.hits, cache.misses) == (0, 0)


def test_function_names_carry_no_addresses():
    def attention(q, interpret=False):
        return q

    name = describe_function(functools.partial(attention, interpret=True))
    assert "interpret=True" in name and "attention" in name and "0x" not in name


@pytest.mark.parametrize("layers_per_call", [None, 1])
def test_runner_from_stored_programs_matches_a_traced_one(tiny_model_dir, tmp_path,
                                                          layers_per_call):
    model = load_model(tiny_model_dir, make_attention_backend("reference"))
    inputs = tiny_batch(model.cfg)
    runners = []
    for program_dir in (None, tmp_path, tmp_path):  # traced, stored, loaded from the store
        runner = tiny_runner(model, layers_per_call, program_dir)
        runner.warmup([inputs], progress=False)
        runners.append(runner)
    programs = 1 if layers_per_call is None else 3  # the step, or embed + layers + head
    assert (runners[1].programs.hits, runners[1].programs.misses) == (0, programs)
    assert (runners[2].programs.hits, runners[2].programs.misses) == (programs, 0)
    results = [runner.execute(inputs) for runner in runners]
    for result in results[1:]:
        np.testing.assert_array_equal(result.tokens, results[0].tokens)
        np.testing.assert_allclose(result.logprobs, results[0].logprobs, rtol=1e-6, atol=1e-6)
    assert all(runner.compilations_after_warmup == 0 for runner in runners)


def test_a_full_disk_still_lowers(tmp_path, monkeypatch):
    from jaxserve.runner import program_cache

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(program_cache.tempfile, "mkstemp", no_space)
    cache = ProgramCache(tmp_path, "ctx")
    exe = cache.lower("update", _update, _args()).compile()  # runs, stores nothing
    np.testing.assert_array_equal(exe(*_args())[0]["a"], np.arange(4) * 2 + 1)
    assert not list(tmp_path.glob("*.exported")) and cache.misses == 1


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from jaxserve.runner import program_cache

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(program_cache.os, "replace", fail)
    cache = ProgramCache(tmp_path, "ctx")
    cache.lower("update", _update, _args()).compile()
    assert list(tmp_path.iterdir()) == []  # neither the program nor its temporary file


def test_a_program_export_cannot_hold_is_traced_instead_and_not_stored(tmp_path, monkeypatch,
                                                                         caplog):
    from jaxserve.runner import program_cache

    def refuse(*_args, **_kwargs):  # as export refuses a custom call it has no guarantee for
        raise ValueError("Cannot serialize code with custom calls\nlong dump")

    monkeypatch.setattr(program_cache.export, "export", refuse)
    cache = ProgramCache(tmp_path, "ctx")
    with caplog.at_level("WARNING", logger="jaxserve.program_cache"):
        exe = cache.lower("update", _update, _args(), donate_argnums=(0,)).compile()
    state, out = exe(*_args())
    np.testing.assert_allclose(np.asarray(state["a"]), [1, 3, 5, 7])
    assert int(out[0]) == 7
    assert not list(tmp_path.glob("*.exported"))
    assert "update is not stored (ValueError: Cannot serialize" in caplog.text
    assert "long dump" not in caplog.text
