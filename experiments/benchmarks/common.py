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


def configure_allocator() -> str:
    """Fixes glibc malloc's mmap threshold at 32 MiB (and its trim threshold at 1 GiB).

    glibc adapts the threshold to the history of frees, so whether a large XLA buffer comes
    from reused heap memory or from fresh mmap pages (one page fault per 4 KiB, every call)
    differs from process to process. Measured: distrax's forward at (4096, 16, 64) ran
    either 4-5 ms or 13-18 ms depending on the run; with the threshold fixed, 4.1-4.9 ms
    in every run. Returns the setting (or why none was made)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return "default (not linux)"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "default (no glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3
    if libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30):
        return "mmap threshold 32 MiB"
    return "default (mallopt refused)"


def time_blocks(fns: dict, settle: float = 0.2, block: float = 0.2, min_calls: int = 5, rounds: int = 5, seed: int = 0):
    """Times several no-argument callables, each in its own steady state.

    Every round visits the callables in a shuffled order. Each visit first calls the callable
    untimed for `settle` seconds, then times consecutive calls for `block` seconds (at least
    `min_calls`) and keeps their median. So a change in background load hits all alike, and no
    callable pays for the one before it: OpenBLAS (behind jaxlib's LAPACK calls and NumPy)
    leaves its threads spinning for a while after a call, taking CPU from whatever runs next
    (measured: our forward at (4096, 16, 64) took 3.5 ms right after distrax's calls, 2.2 ms
    with OPENBLAS_THREAD_TIMEOUT=4, which makes them sleep almost at once, and 2.1 ms in its
    own block).

    Returns {name: median over rounds, ms} and {name: per-round block medians, ms}.
    """
    import jax

    names = list(fns)
    rng = np.random.default_rng(seed)
    times = {name: [] for name in names}
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            fn = fns[names[i]]
            end = time.perf_counter() + settle
            jax.block_until_ready(fn())
            while time.perf_counter() < end:
                jax.block_until_ready(fn())
            calls = []
            end = time.perf_counter() + block
            while len(calls) < min_calls or time.perf_counter() < end:
                t0 = time.perf_counter()
                jax.block_until_ready(fn())
                calls.append(time.perf_counter() - t0)
            times[names[i]].append(1e3 * float(np.median(calls)))
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


def report(title: str, intro: str, header: list[str], rows: list[list], out: str | None, command: str) -> str:
    """Prints a benchmark's markdown report (a title, a line of context, the table) and, with
    `out`, writes it there followed by the command that made it. Returns the text."""
    text = f"# {title}\n\n{intro}\n\n" + markdown_table(header, rows) + "\n"
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + f"\nCommand: {command}\n")
    return text


def markdown_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)
