r"""Long-run stability: every method for 20k steps on the clustered-views task.

  python -m experiments.main --config=experiments/configs/stability.py --workdir=runs/stability

Each method trains in WORKDIR/METHOD (resumable); the report lists non-finite steps, the
loss, gradient norm and embedding spread over the run, and each method's diagnostics.
`:runlocal` is a seconds-long smoke run. `:december` runs GMJE-GNG and the SMC bank on
today's defaults, logged at every step: the loss at GNG's node insertions (the report's
insert_excess column) and the bank's ESS at every step (bank_ess_fraction_min):

  python -m experiments.main --config=experiments/configs/stability.py:december --workdir=runs/stability_december
"""

import ml_collections

from gje_jax.train.configs import load_sibling

_common = load_sibling(__file__, "common")
clustered_views_train = _common.clustered_views_train


def get_config(arg: str = ""):
    if arg not in ("", "runlocal", "december"):
        raise ValueError(f"Unknown config argument {arg!r}; valid: '', 'runlocal' or 'december'.")
    c = ml_collections.ConfigDict()
    c.experiment = "stability"
    c.methods = ("gmje_gng", "gmje_smc") if arg == "december" else ()  # empty: every registered method
    t, tuning = clustered_views_train(runlocal=arg == "runlocal")
    # The full table was made before the December 2026 density changes and not rerun (40 min).
    c.method_tuning = tuning if arg == "december" else {**tuning, **_common.BEFORE_DECEMBER_2026}
    t.num_steps = 40 if arg == "runlocal" else 20000
    # Every step for :december (a spike at an insertion lasts a few steps).
    t.log_every = 10 if arg == "runlocal" else 1 if arg == "december" else 100
    t.checkpoint_every = 20 if arg == "runlocal" else 2000
    t.keep_checkpoints = 1
    c.train = t
    c.lock()
    return c
