"""Training: configs, TrainState (state.py), the pure train step (step.py), checkpoints, the
driver (loop.py).

The method registry is gje_jax.methods.
"""

from gje_jax.methods import Embeddings, Method
from gje_jax.train.configs import base_config, smoke_config
from gje_jax.train.optim import make_optimizer
from gje_jax.train.records import Run, load_run
from gje_jax.train.state import TrainState, create_state
from gje_jax.train.step import train_step

__all__ = [
    "Embeddings",
    "Method",
    "Run",
    "TrainState",
    "base_config",
    "create_state",
    "load_run",
    "make_optimizer",
    "smoke_config",
    "train_step",
]
