"""Pieces shared by the experiment configs: the library's base config and the clustered-views
training section of the trap, sampling and stability experiments."""

import ml_collections

from gje_jax import methods
from gje_jax.train.configs import base_config

__all__ = ["BEFORE_DECEMBER_2026", "base_config", "clustered_views_train", "with_method"]

# The density settings of every method before the December 2026 changes (learned prototype
# logits without re-seeding, EM's re-seeded components at a sample with 1 / K, a fixed bank
# tempering and density reweighting, GNG's components at its node positions).
# Experiments whose tables were made with them and not rerun
# since (the image tables: no GPU lent; the 40-minute stability run) pin them, so their
# commands still reproduce their tables.
BEFORE_DECEMBER_2026 = dict(
    prior="learned",
    reseed=False,
    reseed_at="sample",
    reseed_weight="uniform",
    bank_ess_target=0.0,
    bank_reweight="density",
    gng_means="nodes",
)


def clustered_views_train(runlocal: bool = False) -> tuple[ml_collections.ConfigDict, dict]:
    """The training section shared by the trap, sampling and stability experiments:
    clustered points (32-D, 8 clusters) seen through two noisy views, one MLP encoder whose
    32-D output is the embedding (no projector). runlocal shrinks it to a seconds-long run.

    -> (train config with a placeholder method, method tuning: settings for every method
    that reads them; see `with_method`).
    """
    t = base_config()
    t.batch_size = 256
    t.data.dim = 32
    t.model.hidden = (128,)
    t.model.feature_dim = 32
    tuning = dict(num_components=8, gng_capacity=16, gng_insert_every=50, mdn_hidden=(64,))
    if runlocal:
        t.num_steps = 10
        t.batch_size = 64
        t.data.num_examples = 512
        t.data.dim = 8
        t.model.hidden = (16,)
        t.model.feature_dim = 8
        tuning.update(num_components=3, bank_size=128, gng_capacity=6, gng_insert_every=10, mdn_hidden=(8,))
    return t, tuning


def with_method(train: ml_collections.ConfigDict, name: str, tuning=None, **values) -> ml_collections.ConfigDict:
    """A copy of the train config `train` training method `name`: its default settings, then
    `tuning` where it reads them, then `values` (which must be its settings). Locked."""
    c = ml_collections.ConfigDict(train.to_dict())
    c.method = methods.tuned(name, tuning, **values)
    c.lock()
    return c
