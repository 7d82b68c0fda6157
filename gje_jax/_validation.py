"""Trace-time argument checks shared by the kernels and losses.

Shapes are static under jit, so every check here runs once, at trace time, and
costs nothing in the compiled program. Messages name the argument and its shape.
"""

from __future__ import annotations

import functools
import inspect
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
    """Raises ValueError on NaN/Inf when `x` is concrete (eager calls); a no-op on tracers
    (under jit, vmap or grad NaN propagates: use the debug mode's checkify checks there).

    The reduction runs where `x` lives; only one boolean comes back to the host."""
    if x is None or not is_concrete(x):
        return
    # Inside a jit trace, jnp ops on concrete constants would be staged out (tracers);
    # evaluate this check now instead.
    with jax.ensure_compile_time_eval():
        n_bad = int(jnp.sum(~jnp.isfinite(jnp.asarray(x))))
    if n_bad:
        raise ValueError(f"{name} contains {n_bad} NaN or Inf value(s) (shape {tuple(np.shape(x))}).")


def check_positive_if_concrete(x, name: str) -> None:
    """Raises ValueError when a concrete `x` holds NaN, Inf or a value <= 0 (no-op on tracers)."""
    check_finite_if_concrete(x, name)
    if x is None or not is_concrete(x):
        return
    with jax.ensure_compile_time_eval():
        n_bad = int(jnp.sum(jnp.asarray(x) <= 0))
    if n_bad:
        raise ValueError(f"{name} must be positive; {n_bad} value(s) are <= 0 (shape {tuple(np.shape(x))}).")


def check_log_weights_if_concrete(x, name: str, allow_all_zero: bool = False) -> None:
    """Like check_finite_if_concrete, but -inf (a zero weight) is allowed, as long as at
    least one entry along the last axis is finite (or, with allow_all_zero, not even that:
    an empty particle bank)."""
    if x is None or not is_concrete(x):
        return
    with jax.ensure_compile_time_eval():
        x = jnp.asarray(x)
        bad = bool(jnp.any(jnp.isnan(x) | (x == jnp.inf)))
        empty = x.size and not bool(jnp.all(jnp.any(jnp.isfinite(x), axis=-1)))
    if bad:
        raise ValueError(f"{name} contains NaN or +Inf (shape {tuple(x.shape)}); zero weights are -inf.")
    if empty and not allow_all_zero:
        raise ValueError(f"{name} is -inf everywhere (shape {tuple(x.shape)}): every weight is zero.")


def finite_args(
    *names: str, log_weights: Sequence[str] = (), factors: Sequence[str] = (), positive: Sequence[str] = ()
):
    """Decorator, put above `jax.jit`: an eager call checks the named array arguments for
    NaN/Inf (`log_weights` ones for NaN, +Inf or all -inf; `factors` for a non-positive
    diagonal or a non-zero upper triangle; `positive` ones for NaN, Inf or values <= 0)
    before running; calls on
    tracers (inside jit, vmap, grad) are not checked.

    The check belongs at the public boundary only: library code that has already checked
    its inputs calls `fn.unchecked` (the jitted function itself), so an eager call pays
    one check per user argument, not one per internal call."""

    def decorate(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = sig.bind_partial(*args, **kwargs).arguments
            for n in names:
                if n in bound:
                    check_finite_if_concrete(bound[n], n)
            for n in log_weights:
                if n in bound:
                    check_log_weights_if_concrete(bound[n], n)
            for n in factors:
                if n in bound:
                    check_scale_tril_if_concrete(bound[n], n)
            for n in positive:
                if n in bound:
                    check_positive_if_concrete(bound[n], n)
            return fn(*args, **kwargs)

        wrapper.unchecked = fn
        return wrapper

    return decorate


def check_int(x, name: str, minimum: int = 1) -> int:
    """A Python/numpy integer >= minimum (floats such as 2.5 or 2.0 are refused, not truncated)."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {x!r} ({type(x).__name__}).")
    if int(x) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {int(x)}.")
    return int(x)


def is_zero(x) -> bool:
    """True for a concrete scalar equal to 0: a term it weights can be skipped. A traced
    weight (a schedule inside jit) is never skipped; its term is computed and weighted."""
    if isinstance(x, jax.core.Tracer):
        return False
    return float(x) == 0.0


def range_text(low=None, high=None, low_open=False, high_open=False) -> str:
    """'[0, 1)'-style text of an interval (an absent bound is an open infinity)."""
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    return f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"


def check_number(x, name: str, *, low=None, high=None, low_open=False, high_open=False):
    """A finite scalar in [low, high] (open ends as asked). Tracers pass (a traced value,
    e.g. a schedule inside jit, cannot be checked and is not refused). The one range check
    of the library: loss arguments and declared config settings (gje_jax.settings) use it."""
    if isinstance(x, jax.core.Tracer):
        return x
    try:
        val = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {x!r}.") from None
    shown = x if isinstance(x, (int, float)) else val
    if not np.isfinite(val):
        raise ValueError(f"{name} must be finite, got {shown!r}.")
    if (low is not None and (val <= low if low_open else val < low)) or (
        high is not None and (val >= high if high_open else val > high)
    ):
        raise ValueError(f"{name} must be in {range_text(low, high, low_open, high_open)}, got {shown!r}.")
    return x


def check_scale_tril_if_concrete(scale_tril, name: str) -> None:
    """For concrete [..., D, D] factors: NaN/Inf, a non-positive diagonal (the factor of a
    singular or meaningless covariance) and a non-zero upper triangle (a factor that is not
    lower-triangular: an upper Cholesky factor, say) are refused, naming the component."""
    if scale_tril is None or not is_concrete(scale_tril):
        return
    check_finite_if_concrete(scale_tril, name)
    with jax.ensure_compile_time_eval():  # reduced where the factor lives: two booleans come back
        x = jnp.asarray(scale_tril)
        ok = bool(jnp.all(jnp.diagonal(x, axis1=-2, axis2=-1) > 0)) and not bool(jnp.any(jnp.triu(x, 1) != 0))
    if ok:
        return
    a = np.asarray(scale_tril)  # only to name the bad entry
    diag = np.diagonal(a, axis1=-2, axis2=-1)
    bad = np.argwhere(~(diag > 0))
    if bad.size:
        where = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"{name} must have a positive diagonal (a Cholesky factor); entry {where} of its diagonal is "
            f"{float(diag[where])!r} (shape {tuple(a.shape)})."
        )
    upper = np.triu(a, k=1)
    if np.any(upper != 0):
        where = tuple(int(i) for i in np.argwhere(upper != 0)[0])
        raise ValueError(
            f"{name} must be lower-triangular (scale_tril, L with Sigma = L L^T), but entry {where} above "
            f"the diagonal is {float(a[where])!r}. Pass the lower factor, e.g. np.linalg.cholesky(cov)."
        )


def may_hold_neg_inf(path: str) -> bool:
    """Leaves that legitimately hold -inf: log-weights of empty slots or dead components."""
    return "log_weight" in path


def finite_flags(tree) -> tuple[list[str], jax.Array]:
    """-> (paths of the floating leaves of `tree`, bool [L]: leaf l holds no NaN/Inf).

    A log-weight leaf (`may_hold_neg_inf`) may hold -inf. jit-safe: one reduction per leaf,
    stacked, so a caller on the host makes one transfer."""
    flat = [
        (jax.tree_util.keystr(path), x)
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    paths = [p for p, _ in flat]
    if not flat:
        return paths, jnp.ones((0,), bool)
    return paths, _finite_flags([x for _, x in flat], tuple(may_hold_neg_inf(p) for p in paths))


@functools.partial(jax.jit, static_argnums=1)
def _finite_flags(leaves, neg_inf_ok):
    return jnp.stack(
        [
            ~jnp.any(jnp.isnan(x) | (x == jnp.inf)) if allow else jnp.all(jnp.isfinite(x))
            for x, allow in zip(leaves, neg_inf_ok)
        ]
    )


def first_nonfinite_leaf(tree) -> str | None:
    """The path (jax.tree_util.keystr) of the first floating leaf of `tree` holding NaN/Inf
    (-inf allowed in log-weights), or None. One transfer to the host."""
    paths, ok = finite_flags(tree)
    bad = np.flatnonzero(~np.asarray(jax.device_get(ok)))
    return paths[int(bad[0])] if bad.size else None


def check_state_if_concrete(state, name: str) -> None:
    """Refuses a concrete state (a pytree) holding NaN/Inf in any floating leaf, naming the
    field: state written from NaN would silently carry it on. Tracers pass."""
    if not is_concrete(*jax.tree.leaves(state)):
        return
    bad = first_nonfinite_leaf(state)
    if bad is not None:
        raise ValueError(f"{name}{bad} contains NaN or Inf.")


def check_batch(z, name: str = "z") -> jax.Array:
    """A batch z [N, D] as a float array, checked (rank 2, N >= 1, D >= 1, finite when concrete)."""
    z = as_float(z, name)
    check_rank(z, 2, name, "[N, D]")
    check_nonempty(z.shape[0], f"{name} (shape {tuple(z.shape)})")
    if z.shape[1] == 0:
        raise ValueError(f"{name} must have D >= 1 columns, got shape {tuple(z.shape)}.")
    check_finite_if_concrete(z, name)
    return z
