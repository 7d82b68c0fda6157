r"""The Mahalanobis Trace Trap next to its remedies (clustered data, two noisy views,
one shared MLP encoder).

  python -m experiments.main --config=experiments/configs/trap.py --workdir=runs/trap

`:runlocal` is a seconds-long smoke run.
"""

import ml_collections

from gje_jax.train.configs import load_sibling

_common = load_sibling(__file__, "common")
clustered_views_train = _common.clustered_views_train


def get_config(arg: str = ""):
    c = ml_collections.ConfigDict()
    c.experiment = "trap"
    c.eval_every = 50
    c.num_eval = 1024
    if arg not in ("", "runlocal"):
        raise ValueError(f"Unknown config argument {arg!r}; valid: '' or 'runlocal'.")
    t, tuning = clustered_views_train(runlocal=arg == "runlocal")
    if not arg:
        t.num_steps = 1200
        t.data.num_examples = 8192
        tuning["bank_size"] = 2048
    # Constant Adam steps: the naive loss's collapse is steady shrinkage of the output
    # layer, so a decaying schedule would only slow it down.
    t.optim.lr = 2e-3
    t.optim.schedule = "constant"
    c.train = t
    c.method_tuning = tuning  # method settings for every row's method that reads them
    # Ridge of the diagnostics' batch fit (trace_trap_report).
    c.eps_rel = 1e-4
    c.eps_abs = 1e-6
    # (label, method settings): an experiment's choice of variants, each checked against
    # its method's settings (an unknown method or setting fails).
    c.rows = (
        ("GJE batch, lambda_geo=0 (naive)", dict(name="gje", estimator="batch", lambda_geo=0.0)),
        ("GJE batch, lambda_geo=1", dict(name="gje", estimator="batch", lambda_geo=1.0)),
        ("GMJE prototypes (SGD)", dict(name="gmje")),
        ("GMJE online EM", dict(name="gmje_em")),
        ("GMJE-MDN", dict(name="gmje_mdn")),
        ("GMJE-GNG", dict(name="gmje_gng")),
        ("GMJE SMC bank", dict(name="gmje_smc")),
        ("GMJE online EM, lambda_geo=0", dict(name="gmje_em", lambda_geo=0.0)),
        ("GMJE SMC bank (contrastive), lambda_geo=0", dict(name="gmje_smc", bank_loss="contrastive")),
    )
    if arg == "runlocal":
        c.eval_every = 5
        c.num_eval = 128
    c.lock()
    return c
