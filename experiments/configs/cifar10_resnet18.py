r"""CIFAR-10, the GPU recipe: CIFAR-stem ResNet-18, batch 512, 200 epochs, LARS with warm-up and
cosine decay (AdamW with `--config.optim.name=adamw --config.optim.lr=2e-3`).

  python -m experiments.main --config=experiments/configs/cifar10_resnet18.py:simclr --workdir=runs/r18/simclr
  python -m experiments.report_vision --config=experiments/configs/cifar10_resnet18.py --workdir=runs/r18

The argument is the method, as in cifar10_small.py. Pass --config.num_steps to shorten a run;
the schedule follows num_steps.
"""

from gje_jax.models import model_config
from gje_jax.train.configs import load_sibling

_vision = load_sibling(__file__, "vision")
set_method_model = _vision.set_method_model
vision_base = _vision.vision_base


_TRAIN_IMAGES = 50000


def get_config(arg: str = "gmje"):
    c = vision_base(arg or "gmje")
    c.batch_size = 512
    epochs = 200
    c.num_steps = epochs * (_TRAIN_IMAGES // c.batch_size)
    c.log_every = 50
    c.checkpoint_every = 1000
    c.model = model_config(
        "resnet18", stem="cifar", projector="bn", projector_hidden=(2048,), embed_dim=128, dtype="bfloat16"
    )
    c.optim.name = "lars"
    c.optim.lr = 0.3 * c.batch_size / 256  # the usual linear scaling of the LARS base rate
    c.optim.weight_decay = 1e-6
    c.optim.momentum = 0.9
    c.optim.warmup_steps = 10 * (_TRAIN_IMAGES // c.batch_size)
    c.optim.schedule = "cosine"
    c.optim.grad_clip = 0.0
    if "bank_size" in c.method:
        c.method.bank_size = 16384
    set_method_model(c, expander=2048)
    c.lock()
    return c
