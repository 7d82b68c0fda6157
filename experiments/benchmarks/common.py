"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import time

import numpy as np


def configure_cpu_pool() -> str:
    """On jaxlib 0.10.x with <= 4 cores, batched LAPACK gradients in the *reference*
    libraries (TFP, distrax, jnp.linalg) can deadlock XLA's intra-op pool. Enlarge the
    pool before jax is imported unless the user chose a size. Returns the setting."""
    if "PJRT_NPROC" not in os.environ and (os.cpu_count() or 1) <= 4:
        os.environ["PJRT_NPROC"] = "4"
    return os.environ.get("PJRT_NPROC", "default")


def time_call(fn, *args, min_time: float = 0.5, max_reps: int = 50) -> float:
    """Median wall time in ms of fn(*args) (results blocked on), after one warm-up."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def time_interleaved(
    fns: dict, min_time: float = 1.0, min_rounds: int = 7, max_rounds: int = 60, seed: int = 0, warm: bool = True
):
    """Times several no-argument callables side by side: each round calls every one in a
    shuffled order, so a change in background load hits all of them alike.

    warm: each timed call follows an untimed call of the same function. Without it, a call
    right after a *different* program also pays for waking the intra-op thread pool and
    refilling caches; the steady state a kernel has inside a loop is what we compare.

    Returns {name: median ms} and {name: per-round times in ms} (results blocked on).
    """
    import jax

    names = list(fns)
    for name in names:  # warm-up
        jax.block_until_ready(fns[name]())
    rng = np.random.default_rng(seed)
    times = {name: [] for name in names}
    start = time.perf_counter()
    while len(times[names[0]]) < min_rounds or (
        time.perf_counter() - start < min_time * len(names) and len(times[names[0]]) < max_rounds
    ):
        for i in rng.permutation(len(names)):
            if warm:
                jax.block_until_ready(fns[names[i]]())
            t0 = time.perf_counter()
            jax.block_until_ready(fns[names[i]]())
            times[names[i]].append(1e3 * (time.perf_counter() - t0))
    return {name: float(np.median(t)) for name, t in times.items()}, times


def ratio(times: dict, ref: str, ours: str = "ours") -> float:
    """Median over rounds of ref's time / ours in the same round (robust to drifting load)."""
    return float(np.median(np.asarray(times[ref]) / np.asarray(times[ours])))


def compile_time(jitted, *args):
    """(compiled executable, seconds to lower and compile)."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def matmul_gflops(n: int = 2048) -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    ms = time_call(f, a)
    return 2 * n**3 / (ms * 1e-3) / 1e9


def markdown_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)
