r"""Unconditional sampling from the learned latent densities (synthetic views and CIFAR-10).

  python -m experiments.main --config=experiments/configs/sampling.py --workdir=runs/sampling
  python -m experiments.main --config=experiments/configs/sampling.py --workdir=runs/s \
      --config.parts=synthetic                       # without the CIFAR-10 part

The CIFAR-10 part loads the runs of `experiments.report_vision` from vision_workdir
(training any that is missing). `:runlocal` is a seconds-long smoke run (synthetic only).
"""

import ml_collections

from gje_jax.train.configs import load_sibling

_common = load_sibling(__file__, "common")
clustered_views_train = _common.clustered_views_train


def get_config(arg: str = ""):
    c = ml_collections.ConfigDict()
    c.experiment = "sampling"
    c.seed = 0
    c.parts = ("synthetic", "cifar10")
    c.methods = ()  # empty: every registered method
    c.num_heldout = 4000
    if arg not in ("", "runlocal"):
        raise ValueError(f"Unknown config argument {arg!r}; valid: '' or 'runlocal'.")
    # Synthetic part: clustered points (labels = 8 clusters), two noisy views, an MLP encoder.
    t, tuning = clustered_views_train(runlocal=arg == "runlocal")
    if arg == "runlocal":
        t.num_steps = 20
    else:
        t.num_steps = 1500
        t.data.num_examples = 16384
        tuning["bank_size"] = 4096
    c.synthetic = t
    # The SGD prototypes learn 30x faster than the encoder: at its rate their means lagged
    # the embeddings by 7-8 (cluster means at norm 10) and the own-density precision at
    # k = 5 was 0.10-0.30; 0.61-0.67 at 30x, 0.26-0.39 at 100-300x (measured, split re-seeding).
    tuning["lr_scale"] = 30.0
    # ...but their Cholesky factors at the encoder's rate (lr_scale x cov_lr_scale = 1): each
    # factor entry's noisy Adam steps add spurious variance to every component, and at 30x
    # the components came out 1.3-2x as broad as their clusters (own-density precision 0.67;
    # 0.79 / 0.83 / 0.85 with the factors at 9x / 3x / 1x, measured, one run each).
    tuning["cov_lr_scale"] = 1.0 / tuning["lr_scale"]
    # The MDN's own density is its conditional through the data's contexts; with the clustered
    # config's (64,) trunk the conditional was too broad (precision 0.27; 0.46 at (256, 256),
    # 0.52 at (512, 512); a full covariance 0.07 and a linear skip of the context 0.14 at (64,):
    # measured, one run each).
    if arg != "runlocal":
        tuning["mdn_hidden"] = (512, 512)
    # The SMC bank's density with a kernel per particle (from its k-th neighbour): the
    # shared kernel is as wide as the whole embedding cloud in 32-D and its draws land
    # between the clusters (precision 0.00; 0.78 local). Split-and-merge moves for the SGD
    # prototypes (one component per cluster).
    tuning["bank_kernel"] = "local"
    tuning["split_merge"] = True
    c.method_tuning = tuning
    # Components of the post-hoc GMM fitted to each method's embeddings (the clusters of the
    # synthetic part; the image recipes' K).
    c.posthoc_components = dict(synthetic=tuning["num_components"], cifar10=16)
    # CIFAR-10 part: the report_vision runs.
    c.vision_config = "experiments/configs/cifar10_small.py"
    c.vision_size = ""
    c.vision_workdir = "runs/c10"
    c.vision_train_embeddings = 10000
    if arg == "runlocal":
        c.parts = ("synthetic",)
        c.num_heldout = 256
    c.lock()
    return c
