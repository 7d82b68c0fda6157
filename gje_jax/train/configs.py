"""Train configs as data: the top-level settings, `base_config(method)` (every section at its
defaults) and `smoke_config(method)` (a seconds-long run on synthetic data, for tests,
examples and first steps). Experiment configs (experiments/configs/) build on these.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import ml_collections

from gje_jax import methods
from gje_jax.models import model_config
from gje_jax.settings import Setting, integer
from gje_jax.train.optim import optim_config

SETTINGS = {
    "seed": integer(0, "seed of the initialisation, the batches and the views", low=0),
    "batch_size": integer(256, "global batch size (divisible by the number of devices)"),
    "num_steps": integer(1000, "training steps"),
    "log_every": integer(50, "steps between logged metrics"),
    "checkpoint_every": integer(500, "steps between checkpoints"),
    "keep_checkpoints": integer(3, "checkpoints kept"),
    "resume_from_step": integer(
        -1, "-1: the latest checkpoint; N: resume from step N (later ones moved aside)", low=-1
    ),
    "debug": Setting(False, "named NaN/Inf checks in every step (checkify); slower, for hunting a NaN", "bool"),
}
SECTIONS = ("method", "data", "model", "optim", "distributed")


def clustered_data(**values) -> dict:
    """config.data for in-memory clustered points (gje_jax.data.synthetic).

    Example:
      >>> from gje_jax.train.configs import clustered_data
      >>> clustered_data(dim=8)["dim"]
      8
    """
    return {"name": "clustered", "num_examples": 8192, "dim": 32, "num_clusters": 8, "noise": 0.1, **values}


def alignment_data(task: str = "two_branch", **values) -> dict:
    """config.data for the pairs (c, t) of a synthetic alignment task (gje_jax.data.synthetic);
    train them with `model_config('mlp', target='identity')`.

    Example:
      >>> from gje_jax.train.configs import alignment_data
      >>> alignment_data("ring", target_dim=2)["target_dim"]
      2
    """
    return {
        "name": "alignment",
        "task": task,
        "num_examples": 8192,
        "context_dim": 1,
        "target_dim": 1,
        "noise": 0.1,
        **values,
    }


def base_config(method: str = "gje") -> ml_collections.ConfigDict:
    """A train config: the top-level settings, `method`'s settings, clustered data, an MLP
    encoder and AdamW, every value at its default.

    Example:
      >>> from gje_jax.train.configs import base_config
      >>> c = base_config("simclr")
      >>> c.method.to_dict(), c.model.encoder, c.optim.name
      ({'name': 'simclr', 'tau': 0.1}, 'mlp', 'adamw')
    """
    c = ml_collections.ConfigDict({k: s.default for k, s in SETTINGS.items()})
    c.method = methods.default_settings(method)
    c.data = clustered_data()
    c.model = model_config("mlp")
    c.optim = optim_config()
    c.distributed = dict(coordinator_address="", num_processes=0, process_id=-1)
    return c


def smoke_config(method: str = "gje") -> ml_collections.ConfigDict:
    """A seconds-long run of `method` on 512 clustered 8-D points (batch 64, 20 steps), the
    method shrunk by its SMOKE values. Locked: a misspelt field fails.

    Example:
      >>> from gje_jax.train.configs import smoke_config
      >>> c = smoke_config("gmje")
      >>> c.num_steps, c.method.num_components, c.model.feature_dim
      (20, 3, 8)
    """
    c = base_config(method)
    c.method = methods.tuned(method, smoke=True)
    c.batch_size = 64
    c.num_steps = 20
    c.log_every = 5
    c.checkpoint_every = 10
    c.data.num_examples = 512
    c.data.dim = 8
    c.model.hidden = (32,)
    c.model.feature_dim = 8
    c.lock()
    return c


def load_sibling(config_file: str, name: str) -> ModuleType:
    """The module `name`.py in the folder of `config_file`, loaded by path (once).

    Config files are loaded by path (ml_collections' --config=FILE), not as package
    modules, so they reach their shared pieces this way: it works wherever the folder lies
    (a source checkout, an installed package, a copy of your own).

    Example:
      >>> import os, tempfile
      >>> from gje_jax.train.configs import load_sibling
      >>> folder = tempfile.mkdtemp()
      >>> with open(os.path.join(folder, "shared.py"), "w") as f:
      ...     _ = f.write("WIDTH = 64")
      >>> load_sibling(os.path.join(folder, "my_config.py"), "shared").WIDTH
      64
    """
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    key = f"_gje_jax_config_{os.path.splitext(path)[0]}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, path)
        if spec is None or not os.path.exists(path):
            raise FileNotFoundError(f"{path} (a shared config piece beside {config_file}) does not exist.")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]
            raise
    return sys.modules[key]
