"""GJE: the single joint Gaussian loss, the geometry term and the trace-trap diagnostic."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gje_jax import _validation as v
from gje_jax import gaussian as g
from gje_jax import linalg
from gje_jax.mixture import GaussianMixture, component_log_probs

ESTIMATORS = ("batch", "ema", "param")


def check_views(c, t) -> tuple[jax.Array, jax.Array]:
    """Casts and checks a pair of views: c [N, d_c], t [N, d_t] with the same N >= 1."""
    c, t = v.as_float(c, "c"), v.as_float(t, "t")
    v.check_rank(c, 2, "c", "[N, d_c]")
    v.check_rank(t, 2, "t", "[N, d_t]")
    if c.shape[0] != t.shape[0]:
        raise ValueError(f"c and t must hold the same N pairs, got c {tuple(c.shape)} and t {tuple(t.shape)}.")
    v.check_nonempty(c.shape[0], f"the batch (c {tuple(c.shape)})")
    if c.shape[1] == 0 or t.shape[1] == 0:
        raise ValueError(f"c and t need at least one column each, got c {tuple(c.shape)} and t {tuple(t.shape)}.")
    v.check_finite_if_concrete(c, "c")
    v.check_finite_if_concrete(t, "t")
    return c, t


def _geometry_from_cov(s: jax.Array, split: int, eps_rel: float, eps_abs: float) -> jax.Array:
    """G from the joint batch covariance s [D, D]: its diagonal blocks are S_cc and S_tt."""
    half = lambda block: linalg.half_logdet(linalg.cholesky(g.regularize(block, eps_rel, eps_abs)))
    return half(s[:split, :split]) + half(s[split:, split:])


@v.finite_args("c", "t")
@functools.partial(jax.jit, static_argnames=("eps_rel", "eps_abs"))
def geometry_term(
    c: jax.Array, t: jax.Array, *, eps_rel: float = g.DEFAULT_EPS_REL, eps_abs: float = g.DEFAULT_EPS_ABS
) -> jax.Array:
    """G(c, t) = 1/2 log|S_cc,eps| + 1/2 log|S_tt,eps| of the batch covariances of each view.

    Args:
      c: [N, d_c]; t: [N, d_t].

    Returns:
      [] float32. Grows by (d_c + d_t) log s when both views are scaled by s
      (exactly, when eps_abs = 0).

    Example:
      >>> c, t = jax.random.normal(jax.random.key(0), (2, 256, 3))
      >>> g1, g2 = gje_jax.geometry_term(c, t, eps_abs=0.0), gje_jax.geometry_term(2 * c, 2 * t, eps_abs=0.0)
      >>> round(float(g2 - g1), 3) == round(6 * float(jnp.log(2.0)), 3)   # (d_c + d_t) log s
      True
    """
    c, t = check_views(c, t)
    _, s = g.empirical_moments(jnp.concatenate([c, t], axis=-1))
    return _geometry_from_cov(s, c.shape[1], eps_rel, eps_abs)


@v.finite_args("t")
@functools.partial(jax.jit, static_argnames=("eps_rel", "eps_abs"))
def target_geometry_term(
    t: jax.Array, *, eps_rel: float = g.DEFAULT_EPS_REL, eps_abs: float = g.DEFAULT_EPS_ABS
) -> jax.Array:
    """G_t(t) = 1/2 log|S_tt,eps|: the geometry term that pairs with a *conditional* NLL.

    -log p(t | c) gains d_t log s when the embeddings are scaled by s, and so does G_t,
    so conditional NLL - G_t is scale-invariant. (The two-view G of METHOD section 2
    gains (d_c + d_t) log s: with a conditional NLL it would reward unbounded growth of
    the context embeddings.)

    Args:
      t: [N, d_t] target embeddings.

    Returns:
      [] float32.

    Example:
      >>> t = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])   # S_tt = diag(0.5, 2)
      >>> abs(round(float(gje_jax.losses.target_geometry_term(t, eps_rel=0.0, eps_abs=0.0)), 4))   # 1/2 log|S_tt| = 0
      0.0
    """
    t = v.as_float(t, "t")
    v.check_rank(t, 2, "t", "[N, d_t]")
    _, s = g.empirical_moments(t)
    return linalg.half_logdet(linalg.cholesky(g.regularize(s, eps_rel, eps_abs)))


def gje_loss(
    c: jax.Array,
    t: jax.Array,
    *,
    estimator: str = "batch",
    density: GaussianMixture | g.GaussianStats | None = None,
    lambda_geo: float = 1.0,
    eps_rel: float = g.DEFAULT_EPS_REL,
    eps_abs: float = g.DEFAULT_EPS_ABS,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_GJE = mean_i -log N(z_i | mu, L L^T) - lambda_geo * G(c, t), z_i = [c_i ; t_i].

    Args:
      c: [N, d_c] context embeddings; t: [N, d_t] target embeddings.
      estimator: where (mu, L) come from:
        'batch': the regularised empirical Gaussian of this batch, with gradients
          (lambda_geo = 0 here is the naive loss that falls into the trace trap);
        'ema': `density` holds running statistics (a `GaussianStats` or a K = 1
          `GaussianMixture`), used under stop-gradient;
        'param': `density` is a learnable K = 1 `GaussianMixture` (gradients flow).
      density: see `estimator`; must be None for 'batch'.
      lambda_geo: weight of the geometry term G; 1 makes the loss scale-invariant.
      eps_rel, eps_abs: ridge of every covariance estimate.

    Returns:
      (loss [], metrics) with metrics 'loss', 'nll', 'geometry', 'mahalanobis' (mean
      squared Mahalanobis distance), 'logdet' (log|Sigma| of the density), 'mi'
      (Gaussian MI of the batch fit), 'effective_rank' and 'std_mean' of the batch.

    Example:
      >>> c = jax.random.normal(jax.random.key(0), (256, 4))
      >>> t = c[:, :2] + 0.1 * jax.random.normal(jax.random.key(1), (256, 2))
      >>> loss, metrics = gje_jax.gje_loss(c, t, estimator="batch", lambda_geo=1.0)
      >>> loss.shape, sorted(metrics)[:3]
      ((), ['effective_rank', 'geometry', 'logdet'])
      >>> grads = jax.jit(jax.grad(lambda c, t: gje_jax.gje_loss(c, t)[0]))(c, t); grads.shape
      (256, 4)
    """
    c, t = check_views(c, t)
    z = jnp.concatenate([c, t], axis=-1)
    # One pass over the batch: its moments serve the batch density, G and the metrics.
    mu, s = g.empirical_moments(z)
    batch_fit = GaussianMixture(
        jnp.zeros((1,), z.dtype), mu[None], linalg.cholesky(g.regularize(s, eps_rel, eps_abs))[None]
    )
    if estimator == "batch":
        if density is not None:
            raise ValueError("estimator='batch' fits the density from the batch; pass density=None.")
        dens = batch_fit
    elif estimator in ("ema", "param"):
        if density is None:
            raise ValueError(
                f"estimator={estimator!r} needs `density` (a K = 1 GaussianMixture"
                f"{' or GaussianStats' if estimator == 'ema' else ''})."
            )
        if isinstance(density, g.GaussianStats):
            if estimator != "ema":
                raise ValueError("GaussianStats are running statistics: use estimator='ema'.")
            dens = density.to_gaussian(eps_rel, eps_abs)
        else:
            dens = density
        dens.validate()  # user parameters: shapes, and NaN/Inf when called eagerly
        if dens.num_components != 1 or dens.dim != z.shape[1]:
            raise ValueError(
                f"density must be one Gaussian over D = {z.shape[1]} (d_c + d_t), got K = "
                f"{dens.num_components}, D = {dens.dim}."
            )
        if estimator == "ema":
            dens = jax.lax.stop_gradient(dens)
    else:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}.")

    logp, maha = component_log_probs.unchecked(z, dens.means, dens.scale_tril)
    nll = -jnp.mean(logp)
    geo = _geometry_from_cov(s, c.shape[1], eps_rel, eps_abs) if not v.is_zero(lambda_geo) else jnp.zeros((), z.dtype)
    loss = nll - lambda_geo * geo

    batch_fit, s = jax.lax.stop_gradient((batch_fit, s))
    metrics = {
        "loss": loss,
        "nll": nll,
        "geometry": geo,
        "mahalanobis": jnp.mean(maha),
        "logdet": 2.0 * linalg.half_logdet(dens.scale_tril[0]),
        "mi": g.gaussian_mutual_information(batch_fit, c.shape[1]),
        "effective_rank": g.effective_rank(s),
        "std_mean": jnp.mean(jnp.sqrt(jnp.diagonal(s))),
    }
    return loss, metrics


def trace_trap_report(
    c: jax.Array,
    t: jax.Array | None = None,
    *,
    eps_rel: float = g.DEFAULT_EPS_REL,
    eps_abs: float = g.DEFAULT_EPS_ABS,
) -> dict[str, jax.Array]:
    """Diagnoses the Mahalanobis Trace Trap of the `batch` estimator on one batch.

    With S fitted to the same batch it scores, mean_i (z_i - mu)^T S_eps^{-1} (z_i - mu)
    = sum_j s_j / (s_j + eps) (= D when eps = 0, N > D), so it carries (almost) no
    gradient and the naive loss only shrinks log|S|.

    Args:
      c: [N, d_c] (or the joint z [N, D] when t is None); t: [N, d_t] or None.
      eps_rel, eps_abs: the ridge used by the loss.

    Returns:
      dict of [] float32: 'mahalanobis_mean', 'dim' (D), 'mahalanobis_expected'
      (sum_j s_j/(s_j + eps) from the eigenvalues), 'grad_norm_mahalanobis' and
      'grad_norm_logdet' (norms of d/dz of the mean Mahalanobis term and of
      1/2 log|S_eps|, the two parts of the naive NLL), 'effective_rank', 'std_min',
      'std_mean' (per-dimension standard deviations of the batch).

    Example:
      >>> z = jax.random.normal(jax.random.key(0), (512, 8))
      >>> r = gje_jax.trace_trap_report(z, eps_rel=0.0, eps_abs=0.0)
      >>> round(float(r["mahalanobis_mean"]), 2), float(r["grad_norm_mahalanobis"]) < 1e-3 < float(r["grad_norm_logdet"])
      (8.0, True)
    """
    if t is None:
        z = v.as_float(c, "z")
        v.check_rank(z, 2, "z", "[N, D]")
    else:
        c, t = check_views(c, t)
        z = jnp.concatenate([c, t], axis=-1)
    z = v.check_batch(z)
    d = z.shape[1]

    def maha_mean(x):
        fit = g.fit_gaussian(x, eps_rel, eps_abs)
        _, maha = component_log_probs(x, fit.means, fit.scale_tril)
        return jnp.mean(maha)

    def half_logdet(x):
        return linalg.half_logdet(g.fit_gaussian(x, eps_rel, eps_abs).scale_tril[0])

    m, g_maha = jax.value_and_grad(maha_mean)(z)
    g_logdet = jax.grad(half_logdet)(z)
    _, s = g.empirical_moments(z)
    ev = jnp.clip(jnp.linalg.eigvalsh(s), 0.0, None)
    eps = eps_rel * jnp.trace(s) / d + eps_abs
    std = jnp.sqrt(jnp.diagonal(s))
    return {
        "mahalanobis_mean": m,
        "dim": jnp.asarray(d, z.dtype),
        "mahalanobis_expected": jnp.sum(ev / (ev + eps)),
        "grad_norm_mahalanobis": jnp.linalg.norm(g_maha),
        "grad_norm_logdet": jnp.linalg.norm(g_logdet),
        "effective_rank": g.effective_rank(s),
        "std_min": jnp.min(std),
        "std_mean": jnp.mean(std),
    }
