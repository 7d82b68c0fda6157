r"""Unconditional sampling from the learned latent densities (synthetic views and CIFAR-10).

  python -m experiments.main --config=experiments/configs/sampling.py --workdir=runs/sampling
  python -m experiments.main --config=experiments/configs/sampling.py --workdir=runs/s \
      --config.parts=synthetic                       # without the CIFAR-10 part

The CIFAR-10 part loads the runs of `experiments.report_vision` from vision_workdir
(training any that is missing). `:runlocal` is a seconds-long smoke run (synthetic only).
"""

import ml_collections

from experiments.configs.common import base_config

METHODS = ("gje", "gmje", "gmje_em", "gmje_mdn", "gmje_gng", "gmje_smc", "simclr", "vicreg", "predictor")


def get_config(arg: str = ""):
    c = ml_collections.ConfigDict()
    c.experiment = "sampling"
    c.seed = 0
    c.parts = ("synthetic", "cifar10")
    c.methods = METHODS
    c.num_heldout = 4000
    # Synthetic part: clustered points (labels = 8 clusters), two noisy views, an MLP encoder.
    t = base_config()
    t.num_steps = 1500
    t.batch_size = 256
    t.data.dim = 32
    t.data.num_examples = 16384
    t.model.hidden = (128,)
    t.model.feature_dim = 32
    t.model.embed_dim = 16
    t.method.num_components = 8
    t.method.bank_size = 4096
    t.method.gng_capacity = 16
    t.method.gng_insert_every = 50
    t.method.mdn_hidden = (64,)
    c.synthetic = t
    # CIFAR-10 part: the report_vision runs.
    c.vision_config = "experiments/configs/cifar10_small.py"
    c.vision_size = ""
    c.vision_workdir = "runs/c10"
    c.vision_train_embeddings = 10000
    if arg == "runlocal":
        c.parts = ("synthetic",)
        c.num_heldout = 256
        t.num_steps = 20
        t.batch_size = 64
        t.data.num_examples = 512
        t.data.dim = 8
        t.model.hidden = (16,)
        t.model.feature_dim = 8
        t.model.embed_dim = 4
        t.method.num_components = 3
        t.method.bank_size = 128
        t.method.gng_capacity = 6
        t.method.gng_insert_every = 5
        t.method.mdn_hidden = (16,)
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; valid: '' or 'runlocal'.")
    c.lock()
    return c
