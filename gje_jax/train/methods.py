"""Moved: the method registry is gje_jax.methods (one module per method). These names stay
importable from here for code written against the earlier layout."""

from gje_jax.methods import Embeddings, Method, build, ema_update, names

__all__ = ["Embeddings", "Method", "build", "ema_update", "names"]
