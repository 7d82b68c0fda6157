r"""Long-run stability: every method for 20k steps on the clustered-views task.

  python -m experiments.main --config=experiments/configs/stability.py --workdir=runs/stability

Each method trains in WORKDIR/METHOD (resumable); the report lists non-finite steps, the
loss, gradient norm and embedding spread over the run, and each method's diagnostics.
`:runlocal` is a seconds-long smoke run.
"""

import ml_collections

from gje_jax.train.configs import load_sibling

_common = load_sibling(__file__, "common")
clustered_views_train = _common.clustered_views_train


def get_config(arg: str = ""):
    if arg not in ("", "runlocal"):
        raise ValueError(f"Unknown config argument {arg!r}; valid: '' or 'runlocal'.")
    c = ml_collections.ConfigDict()
    c.experiment = "stability"
    c.methods = ()  # empty: every registered method
    t, tuning = clustered_views_train(runlocal=arg == "runlocal")
    # The table was made before the December 2026 density changes and not rerun (40 min).
    c.method_tuning = {**tuning, **_common.BEFORE_DECEMBER_2026}
    t.num_steps = 40 if arg == "runlocal" else 20000
    t.log_every = 10 if arg == "runlocal" else 100
    t.checkpoint_every = 20 if arg == "runlocal" else 2000
    t.keep_checkpoints = 1
    c.train = t
    c.lock()
    return c
