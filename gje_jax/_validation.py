"""Trace-time argument checks shared by the kernels and losses.

Shapes are static under jit, so every check here runs once, at trace time, and
costs nothing in the compiled program. Messages name the argument and its shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def as_float(x, name: str) -> jax.Array:
    """Returns `x` as a floating array: integers and half floats become float32.

    float64 is kept (it only exists when the user enabled `jax_enable_x64`).
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        if jnp.issubdtype(x.dtype, jnp.complexfloating) or x.dtype == jnp.bool_:
            raise TypeError(f"{name} must be real-valued, got dtype {x.dtype}.")
        return x.astype(jnp.float32)
    if jnp.finfo(x.dtype).bits < 32:
        return x.astype(jnp.float32)
    return x


def check_rank(x: jax.Array, rank: int | Sequence[int], name: str, dims: str) -> None:
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if x.ndim not in ranks:
        raise ValueError(
            f"{name} must have shape {dims} (rank {' or '.join(map(str, ranks))}), got shape {tuple(x.shape)}."
        )


def check_dim(actual: int, expected: int, what: str) -> None:
    if actual != expected:
        raise ValueError(f"{what}: expected {expected}, got {actual}.")


def check_nonempty(n: int, name: str, minimum: int = 1) -> None:
    if n < minimum:
        raise ValueError(f"{name} must have at least {minimum} row(s), got {n}.")


def check_split(split: int, dim: int, name: str = "split") -> int:
    split = int(split)
    if not 0 < split < dim:
        raise ValueError(f"{name} must satisfy 0 < {name} < D = {dim}, got {split}.")
    return split


def is_concrete(*xs) -> bool:
    """True when every array is a concrete value (not a tracer), so values can be checked."""
    return all(not isinstance(x, jax.core.Tracer) for x in xs)


def check_finite_if_concrete(x, name: str) -> None:
    """Raises on NaN/Inf when `x` is concrete; a no-op under jit (use checkify there)."""
    if is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"{name} contains NaN or Inf (shape {tuple(np.shape(x))}).")
