"""The step's sampling arrays (``interfaces.SamplingArrays``) as a pytree: one executable per
bucket takes every row's parameters as data, so new values never cause a recompile."""

from __future__ import annotations

import jax

from jaxserve.interfaces import SamplingArrays

__all__ = ["SamplingArrays"]

jax.tree_util.register_dataclass(SamplingArrays)
