r"""Synthetic multi-modal alignment (the default main job).

  python -m experiments.main                        # two_branch, every method (~2 min on 2 CPU cores)
  python -m experiments.main --config=experiments/configs/alignment.py:full --workdir=runs/alignment
  python -m experiments.main --config=experiments/configs/alignment.py --workdir=runs/a \
      --config.run_tasks=ring --config.steps=3000

`:full` runs every task with more data and steps; `:runlocal` is a seconds-long smoke run.
"""

import ml_collections


def get_config(arg: str = ""):
    c = ml_collections.ConfigDict()
    c.experiment = "alignment"
    c.seed = 0
    c.run_tasks = ("two_branch",)
    # Per-task settings (context/target dimension and noise std).
    c.tasks = dict(
        two_branch=dict(context_dim=1, target_dim=1, noise=0.1),
        k_branch=dict(context_dim=1, target_dim=1, noise=0.1),
        ring=dict(context_dim=1, target_dim=2, noise=0.1),
        control=dict(context_dim=1, target_dim=1, noise=0.3),
    )
    c.methods = ()  # rows to run, by label or registry name; empty: every row of experiments/alignment.py's ROWS
    c.num_train = 8192
    c.num_test = 2000
    c.num_samples = 32
    c.steps = 1500
    c.batch_size = 256
    c.lr = 3e-3
    c.hidden = (64, 64)
    c.embed_dim = 2  # context embedding width
    # Method settings for every row's method that reads them (each row names its method).
    c.method_tuning = dict(
        num_components=8,
        gng_capacity=16,
        gng_insert_every=50,
        bank_size=2048,
        bank_kernel="isotropic",
        bank_bandwidth=0.1,
        mdn_hidden=(64,),
    )
    if arg == "full":
        c.run_tasks = ("two_branch", "k_branch", "ring", "control")
        c.num_train = 16384
        c.steps = 3000
    elif arg == "runlocal":
        c.num_train = 1024
        c.num_test = 256
        c.steps = 60
        c.batch_size = 64
        c.num_samples = 8
        c.method_tuning.bank_size = 256
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; valid: '', 'full' or 'runlocal'.")
    c.lock()
    return c
