"""The collector stays off through a start and its survivors are frozen (jaxserve/gc_policy.py)."""

import gc
import threading
from types import SimpleNamespace

import pytest

from jaxserve.gc_policy import collector_paused, freeze_imports


@pytest.fixture(autouse=True)
def _restore_collector():
    was_enabled = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if was_enabled else gc.disable)()


def test_paused_inside_then_frozen_and_back_on():
    gc.enable()
    gc.unfreeze()
    with collector_paused():
        assert not gc.isenabled()
        survivors = [[i] for i in range(1000)]  # container objects the collector tracks
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(survivors)
    walked = {id(o) for o in gc.get_objects()}  # what a collection would look at
    assert not any(id(s) in walked for s in survivors)


def test_a_caller_that_paused_it_keeps_it_paused():
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_a_failed_start_turns_it_back_on_without_freezing():
    gc.enable()
    gc.unfreeze()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("the build failed")
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def _build_like_jaxserve_run(overrides: dict) -> tuple[list, threading.Event]:
    from jaxserve.config import load_config
    from jaxserve.entrypoints.server import _build_in_background
    from tests.support.configs import TINY_CONFIG

    attached: list = []

    class State:  # the part of ServerState the build thread calls
        def attach_threadsafe(self, engine, info):
            attached.append(engine)

    failed = threading.Event()
    gc.disable()  # as `jaxserve run` does before its imports
    thread = _build_in_background(load_config(TINY_CONFIG, overrides), State(),
                                  SimpleNamespace(should_exit=False), failed)
    thread.join(timeout=300)
    assert not thread.is_alive()
    return attached, failed


def test_jaxserve_run_turns_the_collector_back_on_once_built():
    gc.unfreeze()
    attached, failed = _build_like_jaxserve_run({})
    assert attached and not failed.is_set()
    assert gc.isenabled() and gc.get_freeze_count() > 0


def test_jaxserve_run_turns_the_collector_back_on_when_the_build_fails(tmp_path, monkeypatch):
    import jaxserve.pull

    made_by_the_build = []

    def resolve_then_fail(path):  # the build's first step after its imports
        made_by_the_build.append([path])  # a container the collector tracks
        raise FileNotFoundError(path)

    monkeypatch.setattr(jaxserve.pull, "resolve_model", resolve_then_fail)
    gc.unfreeze()
    attached, failed = _build_like_jaxserve_run({"model.path": str(tmp_path / "no-model")})
    assert failed.is_set() and not attached
    assert gc.isenabled()
    # the imports were frozen (freeze_imports); what the failed build made afterwards was not
    assert gc.get_freeze_count() > 0
    assert any(o is made_by_the_build[0] for o in gc.get_objects())


def test_imports_are_frozen_before_the_final_collection():
    gc.enable()
    gc.unfreeze()
    with collector_paused():
        imported = [[i] for i in range(100)]  # stand-ins for module objects
        freeze_imports()
        assert not any(o is imported[0] for o in gc.get_objects())
        built = [[i] for i in range(100)]
        assert any(o is built[0] for o in gc.get_objects())
    assert not any(o is built[0] for o in gc.get_objects())  # frozen at the end


def test_without_freeze_it_collects_and_freezes_nothing():
    gc.enable()
    gc.unfreeze()
    with collector_paused(freeze=False):
        freeze_imports()  # a no-op here: it would freeze a dropped engine awaiting collection
        built = [[i] for i in range(100)]
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert any(o is built[0] for o in gc.get_objects())


def test_a_dropped_llm_is_freed():
    """An offline LLM's build freezes nothing, so a second LLM in a notebook does not keep the
    first one's weights and K/V cache."""
    import weakref

    from jaxserve.llm import LLM
    from tests.support.configs import TINY_CONFIG

    gc.enable()
    gc.unfreeze()
    llm = LLM(TINY_CONFIG, progress=False)
    assert gc.get_freeze_count() == 0
    runner = weakref.ref(llm.engine.runner)  # holds the weights and the K/V cache
    dropped = weakref.ref(llm)
    del llm
    gc.collect()
    assert dropped() is None and runner() is None
