"""GaussianMixture / ConditionalMixture against scipy, scikit-learn and textbook float64 formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import sklearn.mixture

import gje_jax
from gje_jax import GaussianMixture
from tests.helpers import log_softmax, random_mixture, random_spd

f32 = lambda x: jnp.asarray(x, jnp.float32)


def _gm(logits, means, chols):
    return GaussianMixture(f32(logits), f32(means), f32(chols))


def test_single_gaussian_log_prob_matches_scipy():
    rng = np.random.default_rng(0)
    _, means, covs, chols = random_mixture(rng, 1, 5)
    z = rng.normal(size=(50, 5)) * 2
    ours = np.asarray(jax.jit(lambda z: _gm(np.zeros(1), means, chols).log_prob(z))(f32(z)))
    ref = scipy.stats.multivariate_normal(means[0], covs[0]).logpdf(z)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k,d", [(3, 4), (8, 20)])
def test_mixture_matches_sklearn(k, d):
    rng = np.random.default_rng(k)
    logits, means, covs, chols = random_mixture(rng, k, d)
    weights = np.exp(log_softmax(logits))
    sk = sklearn.mixture.GaussianMixture(k, covariance_type="full")
    sk.weights_, sk.means_, sk.covariances_ = weights, means, covs
    sk.precisions_cholesky_ = np.stack([np.linalg.inv(l).T for l in chols])
    z = rng.normal(size=(300, d)) * 3
    gm = _gm(logits, means, chols)
    np.testing.assert_allclose(gm.log_prob(f32(z)), sk.score_samples(z), rtol=1e-5, atol=2e-4)
    np.testing.assert_allclose(gm.responsibilities(f32(z)), sk.predict_proba(z), atol=2e-4)


def test_chunked_evaluation_equals_unchunked():
    rng = np.random.default_rng(1)
    logits, means, _, chols = random_mixture(rng, 5, 6)
    gm, z = _gm(logits, means, chols), f32(rng.normal(size=(103, 6)))
    np.testing.assert_allclose(gm.log_prob(z, chunk_elements=5 * 6 * 10), gm.log_prob(z), rtol=1e-6)


def _textbook_condition(logits, means, covs, c, dc):
    """Explicit-inverse float64 conditional of a mixture: weights [N, K], means [N, K, dt], covs [K, dt, dt]."""
    k = len(logits)
    logr, m, s = [], [], []
    for j in range(k):
        mu_c, mu_t = means[j, :dc], means[j, dc:]
        s_cc, s_tc, s_tt = covs[j, :dc, :dc], covs[j, dc:, :dc], covs[j, dc:, dc:]
        gain = s_tc @ np.linalg.inv(s_cc)
        m.append(mu_t + (c - mu_c) @ gain.T)
        s.append(s_tt - gain @ s_tc.T)
        logr.append(log_softmax(logits)[j] + scipy.stats.multivariate_normal(mu_c, s_cc).logpdf(c))
    logr = np.stack(logr, -1).reshape(len(c), k)
    return np.exp(log_softmax(logr)), np.stack(m, 1), np.stack(s)


@pytest.mark.parametrize("k", [1, 4])
def test_conditioning_matches_textbook(k):
    rng = np.random.default_rng(10 + k)
    dc, dt = 3, 2
    logits, means, covs, chols = random_mixture(rng, k, dc + dt, spread=1.0)
    c = rng.normal(size=(40, dc))
    cond = jax.jit(lambda c: _gm(logits, means, chols).condition(c))(f32(c))
    r, m, s = _textbook_condition(logits, means, covs, c, dc)
    np.testing.assert_allclose(np.exp(cond.log_weights), r, atol=1e-4)
    np.testing.assert_allclose(cond.means, m, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cond.chols @ np.swapaxes(cond.chols, -1, -2), s, rtol=1e-4, atol=1e-5)
    # Moments of the conditional mixture.
    mean = (r[..., None] * m).sum(1)
    cov = np.einsum("nk,kde->nde", r, s) + np.einsum("nk,nkd,nke->nde", r, m - mean[:, None], m - mean[:, None])
    np.testing.assert_allclose(cond.mean(), mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cond.covariance(), cov, rtol=1e-3, atol=1e-4)
    # Conditional log-density vs scipy mixture of conditionals.
    t = rng.normal(size=(40, dt))
    ref = np.log(
        sum(
            r[:, j] * np.array([scipy.stats.multivariate_normal(m[i, j], s[j]).pdf(t[i]) for i in range(40)])
            for j in range(k)
        )
    )
    np.testing.assert_allclose(cond.log_prob(f32(t)), ref, rtol=1e-4, atol=1e-4)
    w, modes = cond.modes()
    assert np.all(np.diff(np.asarray(w), axis=1) <= 1e-7)
    order = np.argsort(-r, axis=1)
    np.testing.assert_allclose(modes, np.take_along_axis(m, order[..., None], 1), rtol=1e-4, atol=1e-4)


def test_condition_on_target_by_permutation():
    rng = np.random.default_rng(20)
    dc, dt = 2, 3
    logits, means, covs, chols = random_mixture(rng, 3, 5, spread=1.0)
    t = rng.normal(size=(10, dt))
    gm = _gm(logits, means, chols).permute(list(range(dc, 5)) + list(range(dc)))
    cond = gm.condition(f32(t))
    perm = list(range(dc, 5)) + list(range(dc))
    r, m, _ = _textbook_condition(logits, means[:, perm], covs[:, perm][:, :, perm], t, dt)
    np.testing.assert_allclose(np.exp(cond.log_weights), r, atol=1e-4)
    np.testing.assert_allclose(cond.means, m, rtol=1e-4, atol=1e-4)


def test_marginal_matches_covariance_block():
    rng = np.random.default_rng(21)
    logits, means, covs, chols = random_mixture(rng, 2, 6)
    for start, stop in [(0, 3), (2, 5), (4, 6)]:
        mg = _gm(logits, means, chols).marginal(start, stop)
        np.testing.assert_allclose(mg.means, means[:, start:stop], rtol=1e-6)
        np.testing.assert_allclose(
            mg.chols @ np.swapaxes(mg.chols, 1, 2), covs[:, start:stop, start:stop], rtol=1e-4, atol=1e-5
        )


def test_sampling_moments_within_monte_carlo_error():
    rng = np.random.default_rng(30)
    logits, means, covs, chols = random_mixture(rng, 3, 3, spread=2.0)
    gm = _gm(logits, means, chols)
    n = 200_000
    x = np.asarray(jax.jit(lambda k: gm.sample(k, n))(jax.random.key(0)), np.float64)
    w = np.exp(log_softmax(logits))
    mean = w @ means
    cov = np.einsum("k,kde->de", w, covs) + np.einsum("k,kd,ke->de", w, means - mean, means - mean)
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.05 * np.abs(cov).max())
    np.testing.assert_allclose(gm.mean(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gm.covariance(), cov, rtol=1e-4, atol=1e-4)


def test_conditional_sampling_moments():
    rng = np.random.default_rng(31)
    logits, means, covs, chols = random_mixture(rng, 3, 3, spread=2.0)
    cond = _gm(logits, means, chols).condition(f32(rng.normal(size=(4, 1))))
    x = np.asarray(cond.sample(jax.random.key(1), 100_000), np.float64)  # [4, n, 2]
    assert x.shape == (4, 100_000, 2)
    np.testing.assert_allclose(x.mean(1), cond.mean(), atol=0.03 * float(np.abs(cond.covariance()).max()) ** 0.5 + 0.01)
    for i in range(4):
        np.testing.assert_allclose(np.cov(x[i].T), cond.covariance()[i], atol=0.05 * np.abs(cond.covariance()[i]).max())


def test_jit_vmap_grad():
    rng = np.random.default_rng(40)
    logits, means, _, chols = random_mixture(rng, 3, 4)
    gm = _gm(logits, means, chols)
    zs = f32(rng.normal(size=(5, 7, 4)))
    batched = jax.vmap(gm.log_prob)(zs)
    np.testing.assert_allclose(batched, jnp.stack([gm.log_prob(z) for z in zs]), rtol=1e-5)
    grads = jax.grad(lambda m: jnp.sum(m.log_prob(zs[0])))(gm)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_from_covariances_checks_values():
    rng = np.random.default_rng(41)
    covs = np.stack([random_spd(rng, 3), -np.eye(3)])
    with pytest.raises(ValueError, match=r"covs\[1\] is not positive definite"):
        GaussianMixture.from_covariances(np.zeros(2), np.zeros((2, 3)), covs)
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture.from_covariances(np.zeros(1), np.full((1, 3), np.nan), np.eye(3)[None])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda gm: gm.log_prob(jnp.ones((4, 5))), "dimension 5"),
        (lambda gm: gm.log_prob(jnp.ones((4,))), r"\[N, D\]"),
        (lambda gm: gm.condition(jnp.ones((4, 3)), split=3), "split"),
        (lambda gm: gm.condition(jnp.ones((4, 2)), split=1), "columns"),
        (lambda gm: gm.marginal(2, 1), "start < stop"),
    ],
)
def test_bad_input_raises_clear_errors(call, match):
    gm = GaussianMixture.from_covariances(jnp.zeros(2), jnp.zeros((2, 3)), jnp.stack([jnp.eye(3)] * 2))
    with pytest.raises(ValueError, match=match):
        call(gm)


def test_zero_components_and_mismatched_shapes():
    with pytest.raises(ValueError, match="K >= 1"):
        GaussianMixture(jnp.zeros(0), jnp.zeros((0, 3)), jnp.zeros((0, 3, 3))).log_prob(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="chols must have shape"):
        GaussianMixture(jnp.zeros(2), jnp.zeros((2, 3)), jnp.zeros((2, 4, 4))).log_prob(jnp.ones((2, 3)))


def test_integer_input_is_promoted():
    gm = GaussianMixture.from_covariances(jnp.zeros(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
    out = gm.log_prob(jnp.ones((3, 2), jnp.int32))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(
        out, scipy.stats.multivariate_normal(np.zeros(2), np.eye(2)).logpdf(np.ones((3, 2))), rtol=1e-6
    )


def test_public_api_names():
    for name in ["GaussianMixture", "ConditionalMixture", "fit_gaussian", "gaussian_mutual_information"]:
        assert hasattr(gje_jax, name)
    for name in ["gje_loss", "gmje_loss", "geometry_term", "trace_trap_report", "infonce", "gmje_contrastive"]:
        assert hasattr(gje_jax.losses, name)


@pytest.mark.parametrize("d", [8, 130, 256])
def test_blocked_triangular_product_matches_dense(d):
    from gje_jax.mixture import _whiten

    rng = np.random.default_rng(d)
    w = np.tril(rng.normal(size=(3, d, d)))
    z = rng.normal(size=(5, d))
    np.testing.assert_allclose(_whiten(f32(w), f32(z)), np.einsum("kde,ne->nkd", w, z), rtol=1e-4, atol=1e-4)
