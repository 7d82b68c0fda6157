"""Synthetic data for CPU-sized runs: clustered points seen through two noisy views."""

from __future__ import annotations

import jax
import numpy as np


def make_clustered(
    seed: int, num_examples: int, dim: int, num_clusters: int, spread: float = 0.3
) -> dict[str, np.ndarray]:
    """Points x [n, dim] float32 around `num_clusters` random centres on the unit sphere,
    with integer labels [n] (the cluster)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, num_clusters, size=num_examples)
    x = centres[labels] + spread / np.sqrt(dim) * rng.normal(size=(num_examples, dim))
    return {"x": x.astype(np.float32), "label": labels.astype(np.int32)}


def clustered_views(batch: dict[str, jax.Array], key: jax.Array, *, noise: float) -> tuple[jax.Array, jax.Array]:
    """Two views of x [B, dim]: independent Gaussian noise of std `noise` (on device)."""
    ka, kb = jax.random.split(key)
    x = batch["x"]
    return (x + noise * jax.random.normal(ka, x.shape, x.dtype), x + noise * jax.random.normal(kb, x.shape, x.dtype))


def views_for(data_config):
    """The on-device view function of a data config: (batch, key) -> (view_a, view_b)."""
    if data_config.name == "clustered":
        noise = float(data_config.noise)
        return lambda batch, key: clustered_views(batch, key, noise=noise)
    raise ValueError(f"config.data.name={data_config.name!r} has no view function.")


def load(data_config, seed: int) -> dict[str, np.ndarray]:
    if data_config.name == "clustered":
        return make_clustered(seed, data_config.num_examples, data_config.dim, data_config.num_clusters)
    raise ValueError(f"config.data.name={data_config.name!r} is unknown; valid: ['clustered'].")
