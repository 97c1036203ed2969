"""The attention backend a model's layers call: traced once per step, whatever the depth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.runner.attention import make_attention_backend, traced_once


def test_traced_once_traces_once_for_every_layer_and_keeps_options_static():
    traces = []

    def attention(q, pages, *, scale: float, window: int | None = None):
        traces.append((q.shape, scale, window))
        out = q * scale + pages.sum()
        return out if window is None else out + window

    fn = traced_once(attention)

    @jax.jit
    def step(q, caches):
        for pages in caches:  # 5 "layers", same shapes
            q = fn(q, pages, scale=0.5)
        return fn(q, caches[0], scale=0.5, window=3)

    q, caches = jnp.ones(4), [jnp.full(2, float(i)) for i in range(5)]
    out = step(q, caches)
    expected = np.ones(4)
    for i in range(5):
        expected = expected * 0.5 + 2 * i
    np.testing.assert_allclose(out, expected * 0.5 + 0 + 3)
    assert traces == [((4,), 0.5, None), ((4,), 0.5, 3)]  # one trace per distinct option set


def test_backends_are_traced_once():
    for name in ("reference", "pallas"):
        backend = make_attention_backend(name)
        assert hasattr(backend.attention, "lower") and hasattr(backend.update_kv, "lower")
