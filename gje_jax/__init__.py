"""gje_jax: Gaussian Joint Embeddings (GJE) and Gaussian Mixture Joint Embeddings (GMJE) in JAX.

Public API: densities (`GaussianMixture`, `ConditionalMixture`, `DiagonalConditionalMixture`), estimators
(`fit_gaussian`, `GaussianStats`), information quantities, Cholesky linear algebra
(`gje_jax.linalg`), losses (`gje_jax.losses`), frozen-feature evaluation
(`gje_jax.evaluation`) and metrics of unconditional samples (`gje_jax.sampling_metrics`).
"""

from gje_jax import calibration, evaluation, linalg, losses, methods, models, remedies, sampling_metrics, settings
from gje_jax.conditional import ConditionalMixture, DiagonalConditionalMixture
from gje_jax.gaussian import (
    GaussianStats,
    effective_rank,
    empirical_moments,
    fit_gaussian,
    gaussian_entropy,
    gaussian_mutual_information,
    ledoit_wolf,
    pooled_covariance,
    pooled_ridge,
    pooled_variance,
    regularize,
)
from gje_jax.losses import (
    geometry_term,
    gje_loss,
    gmje_contrastive,
    gmje_loss,
    infonce,
    trace_trap_report,
)
from gje_jax.mixture import GaussianMixture, component_log_probs
from gje_jax.remedies import em, gng, resampling, smc  # also reachable as gje_jax.em etc.

__version__ = "0.1.0"

__all__ = [
    "ConditionalMixture",
    "DiagonalConditionalMixture",
    "GaussianMixture",
    "GaussianStats",
    "component_log_probs",
    "effective_rank",
    "empirical_moments",
    "calibration",
    "em",
    "evaluation",
    "fit_gaussian",
    "gaussian_entropy",
    "gaussian_mutual_information",
    "geometry_term",
    "gje_loss",
    "gng",
    "gmje_contrastive",
    "gmje_loss",
    "infonce",
    "ledoit_wolf",
    "linalg",
    "losses",
    "methods",
    "models",
    "pooled_covariance",
    "pooled_ridge",
    "pooled_variance",
    "regularize",
    "remedies",
    "resampling",
    "sampling_metrics",
    "settings",
    "smc",
    "trace_trap_report",
]
