r"""Any method on clustered points seen through two noisy views (CPU-sized).

  python -m experiments.main --config=experiments/configs/synthetic_views.py --workdir=runs/views
  python -m experiments.main --config=experiments/configs/synthetic_views.py:runlocal \
      --config.method.name=gmje --workdir=runs/views_gmje

`:runlocal` shrinks it to a few seconds (tests and smoke runs).
"""

from experiments.configs.common import base_config


def get_config(arg: str = ""):
    config = base_config()
    if arg == "runlocal":
        config.batch_size = 64
        config.num_steps = 20
        config.log_every = 5
        config.checkpoint_every = 10
        config.data.num_examples = 512
        config.data.dim = 8
        config.model.hidden = (32,)
        config.model.feature_dim = 8
        config.model.embed_dim = 4
        config.method.num_components = 3
        config.method.predictor_hidden = (16,)
        config.method.mdn_hidden = (16,)
        config.method.gng_capacity = 8
        config.method.gng_insert_every = 20
        config.method.bank_size = 256
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; valid: '' or 'runlocal'.")
    config.lock()  # An unknown key (a typo) now fails, listing the valid ones.
    return config
