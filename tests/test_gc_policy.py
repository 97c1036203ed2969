"""The collector stays off through a start and its survivors are frozen (jaxserve/gc_policy.py)."""

import gc

import pytest

from jaxserve.gc_policy import collector_paused


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
