"""Training: TrainState, the pure train step, the method registry, checkpoints, the driver."""

from gje_jax.train.methods import METHODS, Embeddings, Method, get_method
from gje_jax.train.records import Run, load_run
from gje_jax.train.state import TrainState, create_state, make_optimizer, train_step

__all__ = [
    "METHODS",
    "Embeddings",
    "Method",
    "Run",
    "TrainState",
    "create_state",
    "get_method",
    "load_run",
    "make_optimizer",
    "train_step",
]
