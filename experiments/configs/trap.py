r"""The Mahalanobis Trace Trap next to its remedies (clustered data, two noisy views,
one shared MLP encoder).

  python -m experiments.main --config=experiments/configs/trap.py --workdir=runs/trap

`:runlocal` is a seconds-long smoke run.
"""

import ml_collections

from experiments.configs.common import base_config


def get_config(arg: str = ""):
    c = ml_collections.ConfigDict()
    c.experiment = "trap"
    c.eval_every = 50
    c.num_eval = 1024
    t = base_config()
    t.num_steps = 1200
    # Constant Adam steps: the naive loss's collapse is steady shrinkage of the output
    # layer, so a decaying schedule would only slow it down.
    t.optim.lr = 2e-3
    t.optim.schedule = "constant"
    t.batch_size = 256
    t.data.dim = 32
    t.data.num_examples = 8192
    t.model.hidden = (128,)
    t.model.feature_dim = 32
    t.model.embed_dim = 16
    t.method.num_components = 8
    t.method.bank_size = 2048
    t.method.gng_capacity = 16
    t.method.gng_insert_every = 50
    t.method.mdn_hidden = (64,)
    c.train = t
    # (label, method overrides). Rows of unregistered methods are skipped.
    c.rows = (
        ("GJE batch, lambda_geo=0 (naive)", dict(name="gje", estimator="batch", lambda_geo=0.0)),
        ("GJE batch, lambda_geo=1", dict(name="gje", estimator="batch", lambda_geo=1.0)),
        ("GMJE prototypes (SGD)", dict(name="gmje")),
        ("GMJE online EM", dict(name="gmje_em")),
        ("GMJE-MDN", dict(name="gmje_mdn")),
        ("GMJE-GNG", dict(name="gmje_gng")),
        ("GMJE SMC bank", dict(name="gmje_smc")),
        ("GMJE online EM, lambda_geo=0", dict(name="gmje_em", lambda_geo=0.0)),
        ("GMJE SMC bank (contrastive), lambda_geo=0", dict(name="gmje_smc", lambda_geo=0.0, bank_loss="contrastive")),
    )
    if arg == "runlocal":
        c.eval_every = 5
        c.num_eval = 128
        t.num_steps = 10
        t.batch_size = 64
        t.data.num_examples = 512
        t.data.dim = 8
        t.model.hidden = (16,)
        t.model.feature_dim = 8
        t.model.embed_dim = 4
        t.method.num_components = 3
        t.method.bank_size = 128
        t.method.gng_capacity = 6
        t.method.gng_insert_every = 10
        t.method.mdn_hidden = (8,)
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; valid: '' or 'runlocal'.")
    c.lock()
    return c
