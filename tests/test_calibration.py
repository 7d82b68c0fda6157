"""gje_jax.calibration against closed-form coverages (scipy.stats) of mis-scaled Gaussians,
a calibrated bimodal mixture, and hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import gje_jax
from gje_jax import calibration as cal

LEVELS = np.array(cal.LEVELS)


def _gaussian_1d(rng, n, model_std, true_std=0.7):
    means = rng.normal(size=(n, 1, 1)).astype(np.float32)
    t = means[:, 0, :] + true_std * rng.normal(size=(n, 1)).astype(np.float32)
    cond = gje_jax.DiagonalConditionalMixture(
        jnp.zeros((n, 1)), jnp.asarray(means), jnp.full((n, 1, 1), model_std, jnp.float32)
    )
    return cond, jnp.asarray(t)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_a_mis_scaled_gaussian_covers_what_the_normal_cdf_says(scale):
    # Model std = scale * true std: the level-a interval mu +- scale sigma z_a holds a true
    # target with probability 2 Phi(scale z_a) - 1 (central and HPD regions agree here).
    rng = np.random.default_rng(0)
    cond, t = _gaussian_1d(rng, 5000, 0.7 * scale)
    want = 2 * scipy.stats.norm.cdf(scale * scipy.stats.norm.ppf((1 + LEVELS) / 2)) - 1
    key = jax.random.key(1)
    central = cal.central_coverage(cal.central_pit(cond, t, key, 200))
    hpd = cal.hpd_coverage(cal.hpd_pit(cond, t, key, 200))
    np.testing.assert_allclose(central, want, atol=0.03)
    np.testing.assert_allclose(hpd, want, atol=0.03)
    np.testing.assert_allclose(float(cal.ece(hpd)), np.mean(np.abs(want - LEVELS)), atol=0.01)


def test_hpd_regions_of_a_full_covariance_gaussian_follow_the_chi2_law():
    # 2-D, model covariance s^2 Sigma: the level-a region {M <= s^2 chi2_2(a)} with M ~ chi2_2.
    rng = np.random.default_rng(2)
    n, s = 5000, 1.3
    a = rng.normal(size=(2, 2))
    sigma = a @ a.T + 0.5 * np.eye(2)
    chol = np.linalg.cholesky(sigma)
    means = rng.normal(size=(n, 1, 2))
    t = means[:, 0] + rng.normal(size=(n, 2)) @ chol.T
    cond = gje_jax.ConditionalMixture(
        jnp.zeros((n, 1)), jnp.asarray(means, jnp.float32), jnp.asarray(s * chol[None], jnp.float32)
    )
    got = cal.hpd_coverage(cal.hpd_pit(cond, jnp.asarray(t, jnp.float32), jax.random.key(3), 200))
    want = scipy.stats.chi2.cdf(s**2 * scipy.stats.chi2.ppf(LEVELS, 2), 2)
    np.testing.assert_allclose(got, want, atol=0.03)


def test_a_calibrated_bimodal_mixture_has_uniform_pit_and_small_ece():
    # t drawn from the very mixture that scores it: u is uniform (KS test) at every query.
    rng = np.random.default_rng(4)
    n = 5000
    lw = np.log(np.array([0.7, 0.3]))
    means = np.stack([rng.normal(size=n) - 1.5, rng.normal(size=n) + 1.5], 1)[..., None]  # [n, 2, 1]
    stds = np.array([0.3, 0.6])
    pick = rng.random(n) < 0.3
    t = means[np.arange(n), pick.astype(int), 0] + stds[pick.astype(int)] * rng.normal(size=n)
    cond = gje_jax.DiagonalConditionalMixture(
        jnp.broadcast_to(jnp.asarray(lw, jnp.float32), (n, 2)),
        jnp.asarray(means, jnp.float32),
        jnp.broadcast_to(jnp.asarray(stds, jnp.float32)[None, :, None], (n, 2, 1)),
    )
    u = cal.hpd_pit(cond, jnp.asarray(t[:, None], jnp.float32), jax.random.key(5), 500)
    assert scipy.stats.kstest(np.asarray(u), "uniform").pvalue > 1e-3
    assert float(cal.ece(cal.hpd_coverage(u))) < 0.015
    hist = np.asarray(cal.pit_histogram(u, 10))
    np.testing.assert_allclose(hist, 1.0, atol=0.12)
    np.testing.assert_allclose(hist.mean(), 1.0, rtol=1e-6)  # a density over [0, 1]


def test_hand_computed_values_and_jit():
    u = jnp.array([0.0, 0.3, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(cal.hpd_coverage(u, (0.5, 0.8)), [0.6, 0.8])
    np.testing.assert_allclose(cal.central_coverage(u, (0.5,)), [0.6])  # |u - .5| <= .25: .3, .5, .75
    np.testing.assert_allclose(float(cal.ece(jnp.array([0.6, 0.9]), (0.5, 0.8))), 0.1, rtol=1e-6)
    cond, t = _gaussian_1d(np.random.default_rng(6), 50, 1.0)
    key = jax.random.key(7)
    jitted = jax.jit(cal.hpd_pit, static_argnames="num_samples")(cond, t, key, num_samples=64)
    np.testing.assert_array_equal(jitted, cal.hpd_pit(cond, t, key, 64))


def test_bad_inputs_name_what_is_wrong():
    cond, t = _gaussian_1d(np.random.default_rng(8), 4, 1.0)
    with pytest.raises(ValueError, match="levels must be"):
        cal.hpd_coverage(jnp.zeros(4), (0.5, 1.0))
    with pytest.raises(ValueError, match="t must have shape"):
        cal.hpd_pit(cond, jnp.zeros((3, 1)), jax.random.key(0))
    with pytest.raises(ValueError, match="num_samples"):
        cal.hpd_pit(cond, t, jax.random.key(0), 0)
    two_d = gje_jax.DiagonalConditionalMixture(jnp.zeros((4, 1)), jnp.zeros((4, 1, 2)), jnp.ones((4, 1, 2)))
    with pytest.raises(ValueError, match="1-D targets"):
        cal.central_pit(two_d, jnp.zeros((4, 2)), jax.random.key(0))
