"""Helpers shared by the loss modules: input checks of a pair of views, L2 normalisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gje_jax import _validation as v


def normalize(x: jax.Array) -> jax.Array:
    """x [..., d] scaled to unit L2 norm over the last axis (rows of zeros stay zero)."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def check_pair(c, t):
    """Two views c, t [N, d] as float arrays, checked (rank, equal shapes, non-empty, finite)."""
    c, t = v.as_float(c, "c"), v.as_float(t, "t")
    v.check_rank(c, 2, "c", "[N, d]")
    v.check_rank(t, 2, "t", "[N, d]")
    if c.shape != t.shape:
        raise ValueError(f"c and t must have the same shape [N, d], got {tuple(c.shape)} and {tuple(t.shape)}.")
    v.check_nonempty(c.shape[0], f"c (shape {tuple(c.shape)})")
    v.check_finite_if_concrete(c, "c")
    v.check_finite_if_concrete(t, "t")
    return c, t
