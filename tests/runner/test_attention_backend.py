"""The attention a model's layers call is traced once per step, whatever the depth."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxserve.kernels.ragged_paged_attention import cpu_attention
from jaxserve.runner.attention import make_attention_backend


def test_reference_attention_is_traced_once_for_every_layer(monkeypatch):
    """Layers call the reference with the same shapes: 5 layers trace its body as often as 1."""
    traces = []
    real = cpu_attention.sanitize_cu_q_lens  # called while the body is traced, never at run time
    monkeypatch.setattr(cpu_attention, "sanitize_cu_q_lens",
                        lambda *a: traces.append(1) or real(*a))
    backend = make_attention_backend("reference")
    q, pages = jnp.zeros((8, 4, 16)), jnp.zeros((6, 2, 2, 8, 16))
    meta = (jnp.zeros(3, jnp.int32), jnp.zeros((3, 2), jnp.int32), jnp.zeros(4, jnp.int32),
            jnp.zeros(1, jnp.int32))

    def traces_for(layers: int) -> int:
        backend.attention.clear_cache()  # no trace left over from another test or count
        traces.clear()

        def step(q, pages):
            for _ in range(layers):
                q = backend.attention(q, pages, *meta, sm_scale=0.25)
            return q

        jax.jit(step).lower(q, pages)
        return len(traces)

    one = traces_for(1)
    assert one > 0
    assert traces_for(5) == one
    backend.attention.clear_cache()


def test_each_backend_names_its_k_v_storage():
    """The reference keeps a bfloat16 cache as uint16 bits; the Pallas kernels keep it as is."""
    reference_backend, kernels = make_attention_backend("reference"), make_attention_backend("pallas")
    assert reference_backend.kv_storage_dtype("bfloat16") == jnp.uint16
    assert kernels.kv_storage_dtype("bfloat16") == jnp.bfloat16
    for backend in (reference_backend, kernels):
        assert backend.kv_storage_dtype("float32") == jnp.float32
