r"""CIFAR-10 on CPU: a small ConvNet, a fixed budget of about 10 minutes per method on 2 cores.

2400 steps at batch 256 (about 12 epochs): 6-8 minutes per method on the 2-core machine of
2026-11-29 (about 1500 images/s). Earlier 2-core machines ran about 3x slower, and the budget
was 800 steps then; docs/results/ablations/index.md keeps that table and the ablations made at it.

  python -m experiments.main --config=experiments/configs/cifar10_small.py:gmje --workdir=runs/c10/gmje
  python -m experiments.report_vision --config=experiments/configs/cifar10_small.py --workdir=runs/c10

The argument is the method (any of gje_jax.methods.names()); append ',runlocal' for a seconds-long smoke run (e.g. `:simclr,runlocal`).
"""

from gje_jax import methods
from gje_jax.models import model_config
from gje_jax.train.configs import load_sibling

_vision = load_sibling(__file__, "vision")
set_method_model = _vision.set_method_model
vision_base = _vision.vision_base


def get_config(arg: str = "gmje"):
    method, _, size = arg.partition(",")
    c = vision_base(method or "gmje")
    c.batch_size = 256
    c.num_steps = 2400
    c.log_every = 25
    c.checkpoint_every = 100
    c.model = model_config(
        "convnet_small", widths=(32, 64, 128), patch=2, projector="bn", projector_hidden=(512,), embed_dim=64
    )
    c.optim.name = "adamw"
    c.optim.lr = 2e-3
    c.optim.weight_decay = 1e-4
    c.optim.warmup_steps = 25
    c.optim.schedule = "cosine"
    set_method_model(c, expander=1024)
    if size == "runlocal":
        c.batch_size = 32
        c.num_steps = 4
        c.log_every = 2
        c.checkpoint_every = 2
        c.model.widths = (8, 16)
        c.model.projector_hidden = (32,)
        c.model.embed_dim = 8
        smoke = dict(num_components=3, mdn_hidden=(16,), gng_capacity=6, gng_insert_every=2, bank_size=64)
        methods.apply_tuning(c.method, smoke)
        c.eval.probe_epochs = 5
        c.eval.knn_k = (5, 3)
    elif size:
        raise ValueError(f"Unknown size {size!r} in {arg!r}; valid: '' or 'runlocal'.")
    c.lock()
    return c
