"""Losses: each returns (loss [], metrics dict) and is pure and un-jitted."""

from gje_jax.losses.baselines import barlow_twins_loss, predictor_loss, vicreg_loss
from gje_jax.losses.contrastive import gmje_contrastive, infonce
from gje_jax.losses.gaussian import geometry_term, gje_loss, target_geometry_term, trace_trap_report
from gje_jax.losses.mixture import balance_term, gmje_loss

__all__ = [
    "balance_term",
    "barlow_twins_loss",
    "geometry_term",
    "gje_loss",
    "gmje_contrastive",
    "gmje_loss",
    "infonce",
    "predictor_loss",
    "target_geometry_term",
    "vicreg_loss",
    "trace_trap_report",
]
