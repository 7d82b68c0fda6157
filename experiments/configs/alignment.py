r"""Synthetic multi-modal alignment (the default main job).

  python -m experiments.main                        # two_branch, every method (~3 min on 2 CPU cores)
  python -m experiments.main --config=experiments/configs/alignment.py:full --workdir=runs/alignment
  python -m experiments.main --config=experiments/configs/alignment.py --workdir=runs/a \
      --config.run_tasks=ring --config.train.num_steps=3000

`:full` runs every task with more data and steps; `:runlocal` is a seconds-long smoke run.
Every row trains `config.train` (a gje_jax train config on the task's pairs) with its
method, through the library's train loop, in WORKDIR/TASK/ROW.
"""

import ml_collections

from gje_jax.models import model_config
from gje_jax.train.configs import alignment_data, base_config
from gje_jax.train.optim import optim_config


def get_config(arg: str = ""):
    c = ml_collections.ConfigDict()
    c.experiment = "alignment"
    c.run_tasks = ("two_branch",)
    # Per-task data settings (context/target dimension and noise std), merged into
    # config.train.data for each task.
    c.tasks = dict(
        two_branch=dict(context_dim=1, target_dim=1, noise=0.1),
        k_branch=dict(context_dim=1, target_dim=1, noise=0.1),
        ring=dict(context_dim=1, target_dim=2, noise=0.1),
        control=dict(context_dim=1, target_dim=1, noise=0.3),
    )
    # (row label, method settings): the experiment's choice of variants, each checked against
    # its method's settings (an unknown method or setting fails). The mixture methods fit
    # p(t | c) by its conditional NLL: with the identity target there is nothing to collapse
    # on the target side, so no geometry term is needed there.
    cond = dict(objective="conditional", lambda_geo=0.0)
    c.rows = (
        ("predictor (MSE)", dict(name="predictor", predictor_loss="mse", symmetric=False, predictor_hidden=(64,))),
        ("GJE batch, lambda_geo=1", dict(name="gje", estimator="batch", lambda_geo=1.0)),
        ("GJE ema", dict(name="gje", estimator="ema")),
        ("GJE param", dict(name="gje", estimator="param")),
        ("GMJE prototypes (SGD)", dict(name="gmje", **cond)),
        # Online EM's statistics at a 50-step memory (momentum 0.98, not the default 0.9): the
        # encoder is trained against the mixture, and a mixture that follows the last ten
        # batches drifts with it (README, "Online EM's memory": k_branch NLL 0.49-0.97 over
        # three seeds at 0.9, 0.23-0.35 at 0.98).
        ("GMJE online EM", dict(name="gmje_em", em_momentum=0.98, **cond)),
        ("GMJE-MDN", dict(name="gmje_mdn", lambda_geo=0.0)),
        ("GMJE-GNG", dict(name="gmje_gng", **cond)),
        ("GMJE SMC bank", dict(name="gmje_smc", lambda_geo=0.0)),
    )
    c.methods = ()  # rows to run, by label or registry name; empty: every row of c.rows
    c.num_test = 2000
    c.num_samples = 32
    # Draws per query for the calibration columns (coverage resolves levels to 1 / this).
    c.num_calibration_samples = 200
    # The training of every row: f_c an MLP whose 2-D output is the context embedding, the
    # target its own embedding; Adam at a constant rate (no warm-up, decay or clipping).
    t = base_config()
    t.data = alignment_data(num_examples=8192)
    t.model = model_config("mlp", hidden=(64, 64), feature_dim=2, norm="ln", target="identity")
    t.optim = optim_config(lr=3e-3, weight_decay=0.0, warmup_steps=0, schedule="constant", grad_clip=0.0)
    t.batch_size = 256
    t.num_steps = 1500
    t.log_every = 100
    t.checkpoint_every = 1500
    c.train = t
    # Method settings for every row's method that reads them (each row names its method).
    c.method_tuning = dict(
        num_components=8,
        gng_capacity=16,
        gng_insert_every=50,
        bank_size=2048,
        bank_kernel="predictive",
        # Read only with bank_kernel="isotropic" (skipped otherwise): kept so that
        # --config.method_tuning.bank_kernel=isotropic has a width to use and change.
        bank_bandwidth=0.1,
        mdn_hidden=(64,),
        # Off, as by default (online EM and the SGD prototypes read it); here so that
        # --config.method_tuning.split_merge=True can turn it on (README: measured, it hurt).
        split_merge=False,
    )
    if arg == "full":
        c.run_tasks = ("two_branch", "k_branch", "ring", "control")
        t.data.num_examples = 16384
        t.num_steps = t.checkpoint_every = 3000
    elif arg == "runlocal":
        t.data.num_examples = 1024
        c.num_test = 256
        t.num_steps = t.checkpoint_every = 60
        t.log_every = 20
        t.batch_size = 64
        c.num_samples = 8
        c.num_calibration_samples = 100
        c.method_tuning.bank_size = 256
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; valid: '', 'full' or 'runlocal'.")
    c.lock()
    return c
