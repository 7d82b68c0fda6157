"""Training: configs, TrainState, the pure train step, checkpoints, the driver.

The method registry is gje_jax.methods.
"""

from gje_jax.methods import Embeddings, Method
from gje_jax.train.configs import base_config, smoke_config
from gje_jax.train.records import Run, load_run
from gje_jax.train.state import TrainState, create_state, make_optimizer, train_step

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
