"""Data sources: in-memory arrays batched by index, deterministic per (seed, step)."""

from gje_jax.data import augment, images
from gje_jax.data.pipeline import ArraySource, batch_indices, local_slice
from gje_jax.data.synthetic import clustered_views, make_clustered

__all__ = ["ArraySource", "augment", "images", "batch_indices", "clustered_views", "local_slice", "make_clustered"]
