r"""Any method on clustered points seen through two noisy views (CPU-sized).

  python -m experiments.main --config=experiments/configs/synthetic_views.py --workdir=runs/views
  python -m experiments.main --config=experiments/configs/synthetic_views.py:gmje,runlocal --workdir=runs/views_gmje

The argument names the method (any of gje_jax.methods.names(); default gje), so the config's
method section holds that method's settings; `runlocal` shrinks it to a few seconds (tests
and smoke runs). Arguments are comma-separated, in any order.
"""

from gje_jax import methods
from gje_jax.train.configs import base_config, smoke_config


def get_config(arg: str = ""):
    tokens = [t for t in arg.split(",") if t]
    runlocal = "runlocal" in tokens
    names = [t for t in tokens if t != "runlocal"]
    if len(names) > 1 or (names and names[0] not in methods.names()):
        raise ValueError(
            f"Unknown config argument {arg!r}; valid: a method ({', '.join(methods.names())}), "
            "'runlocal', or both comma-separated."
        )
    method = names[0] if names else "gje"
    if runlocal:
        return smoke_config(method)
    config = base_config(method)
    config.lock()  # An unknown key (a typo) now fails, listing the valid ones.
    return config
