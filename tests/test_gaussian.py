"""Single-Gaussian estimators and information quantities against numpy/scipy/sklearn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import sklearn.covariance

import gje_jax
from gje_jax import GaussianStats
from tests.helpers import random_spd


def test_fit_gaussian_matches_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    fit = gje_jax.fit_gaussian(jnp.asarray(z, jnp.float32), eps_rel=1e-3, eps_abs=1e-5)
    s = np.cov(z.T, bias=True)
    s_eps = s + (1e-3 * np.trace(s) / 6 + 1e-5) * np.eye(6)
    np.testing.assert_allclose(fit.means[0], z.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fit.scale_tril[0] @ fit.scale_tril[0].T, s_eps, rtol=1e-4, atol=1e-4)


def test_ledoit_wolf_matches_sklearn():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(30, 20))
    ours, shrink = gje_jax.ledoit_wolf(jnp.asarray(z, jnp.float32))
    ref, ref_shrink = sklearn.covariance.ledoit_wolf(z)
    np.testing.assert_allclose(shrink, ref_shrink, rtol=1e-4)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_entropy_matches_scipy():
    rng = np.random.default_rng(2)
    cov = random_spd(rng, 5)
    gm = gje_jax.GaussianMixture.from_covariances(jnp.zeros(1), jnp.zeros((1, 5)), cov[None])
    np.testing.assert_allclose(
        gje_jax.gaussian_entropy(gm), scipy.stats.multivariate_normal(np.zeros(5), cov).entropy(), rtol=1e-5
    )


def test_mutual_information_matches_canonical_correlations():
    rng = np.random.default_rng(3)
    dc, dt = 3, 4
    cov = random_spd(rng, dc + dt)
    gm = gje_jax.GaussianMixture.from_covariances(jnp.zeros(1), jnp.zeros((1, dc + dt)), cov[None])
    ours = float(jax.jit(lambda g: gje_jax.gaussian_mutual_information(g, dc))(gm))
    s_cc, s_ct, s_tt = cov[:dc, :dc], cov[:dc, dc:], cov[dc:, dc:]
    # Canonical correlations: eigenvalues of S_cc^-1 S_ct S_tt^-1 S_tc are rho_i^2.
    rho2 = np.linalg.eigvals(np.linalg.solve(s_cc, s_ct) @ np.linalg.solve(s_tt, s_ct.T)).real
    np.testing.assert_allclose(ours, -0.5 * np.sum(np.log1p(-rho2)), rtol=1e-4)


def test_mutual_information_rejects_mixtures_and_bad_split():
    gm = gje_jax.GaussianMixture.from_covariances(jnp.zeros(2), jnp.zeros((2, 3)), jnp.stack([jnp.eye(3)] * 2))
    with pytest.raises(ValueError, match="K = 1"):
        gje_jax.gaussian_mutual_information(gm, 1)
    one = gje_jax.GaussianMixture.from_covariances(jnp.zeros(1), jnp.zeros((1, 3)), jnp.eye(3)[None])
    with pytest.raises(ValueError, match="split"):
        gje_jax.gaussian_mutual_information(one, 3)


def test_pooled_variance_and_covariance_are_the_law_of_total_covariance():
    rng = np.random.default_rng(3)
    k, d = 4, 5
    w = rng.dirichlet(np.ones(k))
    mu = rng.normal(size=(k, d)) * 3
    covs = np.stack([random_spd(rng, d) for _ in range(k)])
    # Textbook, uncentred: Cov = sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T, in float64.
    m = w @ mu
    total = np.einsum("k,kde->de", w, covs + np.einsum("kd,ke->kde", mu, mu)) - np.outer(m, m)

    def args(shift=0.0):
        return jnp.asarray(w, jnp.float32), jnp.asarray(mu + shift, jnp.float32), jnp.asarray(covs, jnp.float32)

    np.testing.assert_allclose(float(gje_jax.pooled_variance(*args())), np.trace(total) / d, rtol=1e-5)
    np.testing.assert_allclose(gje_jax.pooled_covariance(*args()), total, rtol=1e-5, atol=1e-5 * np.abs(total).max())
    # Far from the origin the centred form keeps float32 precision (the uncentred one
    # would lose it: |mu|^2 ~ 1e8 against a variance ~ 10).
    np.testing.assert_allclose(float(gje_jax.pooled_variance(*args(1e4))), np.trace(total) / d, rtol=1e-3)
    np.testing.assert_allclose(gje_jax.pooled_covariance(*args(1e4)), total, atol=1e-3 * np.abs(total).max())
    # The two ridge shapes.
    np.testing.assert_allclose(gje_jax.pooled_ridge(*args(), 0.5, "covariance"), 0.5 * total, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gje_jax.pooled_ridge(*args(), 0.5), 0.5 * np.trace(total) / d * np.eye(d), rtol=1e-5)
    with pytest.raises(ValueError, match="Unknown pooled ridge shape 'diag'"):
        gje_jax.pooled_ridge(*args(), 0.5, "diag")
    with pytest.raises(ValueError, match="pooled_eps_rel must be >= 0"):
        gje_jax.pooled_ridge(*args(), -0.5)


def test_ema_statistics_follow_the_recurrence():
    rng = np.random.default_rng(4)
    batches = [rng.normal(size=(64, 3)) + i for i in range(4)]
    stats = GaussianStats.zeros(3)
    m = 0.9
    # Reference: EMA of first and second raw moments, with the first update copying.
    m1, m2 = batches[0].mean(0), (batches[0].T @ batches[0]) / 64
    stats = stats.update(jnp.asarray(batches[0], jnp.float32), m)
    for b in batches[1:]:
        stats = stats.update(jnp.asarray(b, jnp.float32), m)
        m1, m2 = m * m1 + (1 - m) * b.mean(0), m * m2 + (1 - m) * (b.T @ b) / 64
    np.testing.assert_allclose(stats.mean, m1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.cov, m2 - np.outer(m1, m1), rtol=1e-4, atol=1e-4)
    assert int(stats.count) == 4


def test_effective_rank_limits():
    assert float(gje_jax.effective_rank(jnp.eye(7))) == pytest.approx(7.0, rel=1e-5)
    assert float(gje_jax.effective_rank(jnp.diag(jnp.array([1.0, 0, 0, 0])))) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("case", ["n_less_than_d", "identical_rows", "single_row", "huge_norm", "tiny_norm"])
def test_degenerate_batches_give_finite_values_and_gradients(case):
    rng = np.random.default_rng(5)
    z = {
        "n_less_than_d": rng.normal(size=(4, 16)),
        "identical_rows": np.ones((32, 8)),
        "single_row": rng.normal(size=(1, 8)),
        "huge_norm": rng.normal(size=(32, 8)) * 1e6,
        "tiny_norm": rng.normal(size=(32, 8)) * 1e-6,
    }[case]
    z = jnp.asarray(z, jnp.float32)

    def f(z):
        fit = gje_jax.fit_gaussian(z)
        return -jnp.mean(fit.log_prob(z))

    val, grad = jax.value_and_grad(f)(z)
    assert np.isfinite(val) and np.all(np.isfinite(grad))
