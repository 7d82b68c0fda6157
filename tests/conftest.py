"""Test-session setup: 4 fake CPU devices (multi-device tests) and float32 defaults.

Must run before jax is imported anywhere, which conftest.py guarantees under pytest.
"""

import os

from tests.helpers import xla_flags  # imports no jax

os.environ.setdefault("XLA_FLAGS", xla_flags(devices=4))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One on-disk compilation cache per test session (created by the xdist controller, which
# loads this file before it starts the workers; workers, subprocesses and notebook kernels
# inherit it): the many tests that build the same small train step compile it once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gje_jax_jit_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

# Every program, not only those that took over a second to compile: most of the suite's
# programs are small, and the same ones recur across tests (measured on two test files:
# 10 % less CPU time than the default one-second floor).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# Tests run small problems: compile time dominates, so skip most XLA optimisations (as the
# flax examples' tests do). Set through the environment so the subprocesses and notebook
# kernels that tests start inherit it too.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def one_device(monkeypatch):
    """Trains on a one-device mesh in this test (the session has 4 CPU devices on 2 cores,
    where the collectives of a sharded step cost more than a tiny model's maths). For tests
    of what a run does, not how it shards; the multi-device tests compare 4 devices with 1."""
    from jax.sharding import Mesh

    from gje_jax.train import loop

    monkeypatch.setattr(loop, "make_mesh", lambda: Mesh(np.asarray(jax.devices()[:1]), ("data",)))
