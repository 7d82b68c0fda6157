"""Test-session setup: 4 fake CPU devices (multi-device tests) and float32 defaults.

Must run before jax is imported anywhere, which conftest.py guarantees under pytest.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Tests run small problems: compile time dominates, so skip most XLA optimisations
# (as the flax examples' tests do).
jax.config.update("jax_disable_most_optimizations", True)
