"""GaussianMixture / ConditionalMixture against scipy, scikit-learn and textbook float64 formulas."""

import functools

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


def _gm(logits, means, scale_tril):
    return GaussianMixture(f32(logits), f32(means), f32(scale_tril))


def test_single_gaussian_log_prob_matches_scipy():
    rng = np.random.default_rng(0)
    _, means, covs, scale_tril = random_mixture(rng, 1, 5)
    z = rng.normal(size=(50, 5)) * 2
    ours = np.asarray(jax.jit(lambda z: _gm(np.zeros(1), means, scale_tril).log_prob(z))(f32(z)))
    ref = scipy.stats.multivariate_normal(means[0], covs[0]).logpdf(z)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k,d", [(3, 4), (8, 20)])
def test_mixture_matches_sklearn(k, d):
    rng = np.random.default_rng(k)
    logits, means, covs, scale_tril = random_mixture(rng, k, d)
    weights = np.exp(log_softmax(logits))
    sk = sklearn.mixture.GaussianMixture(k, covariance_type="full")
    sk.weights_, sk.means_, sk.covariances_ = weights, means, covs
    sk.precisions_cholesky_ = np.stack([np.linalg.inv(l).T for l in scale_tril])
    z = rng.normal(size=(300, d)) * 3
    gm = _gm(logits, means, scale_tril)
    np.testing.assert_allclose(gm.log_prob(f32(z)), sk.score_samples(z), rtol=1e-5, atol=2e-4)
    np.testing.assert_allclose(gm.responsibilities(f32(z)), sk.predict_proba(z), atol=2e-4)


def test_chunked_evaluation_equals_unchunked():
    rng = np.random.default_rng(1)
    logits, means, _, scale_tril = random_mixture(rng, 5, 6)
    gm, z = _gm(logits, means, scale_tril), f32(rng.normal(size=(103, 6)))
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
    logits, means, covs, scale_tril = random_mixture(rng, k, dc + dt, spread=1.0)
    c = rng.normal(size=(40, dc))
    cond = jax.jit(lambda c: _gm(logits, means, scale_tril).condition(c, split=dc))(f32(c))
    r, m, s = _textbook_condition(logits, means, covs, c, dc)
    np.testing.assert_allclose(np.exp(cond.log_weights), r, atol=1e-4)
    np.testing.assert_allclose(cond.means, m, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cond.scale_tril @ np.swapaxes(cond.scale_tril, -1, -2), s, rtol=1e-4, atol=1e-5)
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
    logits, means, covs, scale_tril = random_mixture(rng, 3, 5, spread=1.0)
    t = rng.normal(size=(10, dt))
    gm = _gm(logits, means, scale_tril).permute(list(range(dc, 5)) + list(range(dc)))
    cond = gm.condition(f32(t), split=dt)
    perm = list(range(dc, 5)) + list(range(dc))
    r, m, _ = _textbook_condition(logits, means[:, perm], covs[:, perm][:, :, perm], t, dt)
    np.testing.assert_allclose(np.exp(cond.log_weights), r, atol=1e-4)
    np.testing.assert_allclose(cond.means, m, rtol=1e-4, atol=1e-4)


def test_marginal_matches_covariance_block():
    rng = np.random.default_rng(21)
    logits, means, covs, scale_tril = random_mixture(rng, 2, 6)
    for start, stop in [(0, 3), (2, 5), (4, 6)]:
        mg = _gm(logits, means, scale_tril).marginal(start, stop)
        np.testing.assert_allclose(mg.means, means[:, start:stop], rtol=1e-6)
        np.testing.assert_allclose(
            mg.scale_tril @ np.swapaxes(mg.scale_tril, 1, 2), covs[:, start:stop, start:stop], rtol=1e-4, atol=1e-5
        )


def test_sampling_moments_within_monte_carlo_error():
    rng = np.random.default_rng(30)
    logits, means, covs, scale_tril = random_mixture(rng, 3, 3, spread=2.0)
    gm = _gm(logits, means, scale_tril)
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


def test_condition_of_a_wrong_width_context_needs_the_split():
    """Without split the joint is read as [c ; t] with d_c = d_t; a context of another
    width is refused (it would silently re-split the joint), and accepted with split."""
    rng = np.random.default_rng(32)
    logits, means, covs, scale_tril = random_mixture(rng, 2, 4, spread=1.0)
    gm = _gm(logits, means, scale_tril)
    assert gm.condition(f32(rng.normal(size=(3, 2)))).means.shape == (3, 2, 2)
    with pytest.raises(ValueError, match="Pass split=d_c explicitly"):
        gm.condition(f32(rng.normal(size=(3, 3))))
    with pytest.raises(ValueError, match="Pass split=d_c explicitly"):  # under jit too: a shape
        jax.jit(gm.condition)(f32(rng.normal(size=(3, 1))))
    c = rng.normal(size=(3, 3))
    r, m, _ = _textbook_condition(logits, means, covs, c, 3)
    np.testing.assert_allclose(gm.condition(f32(c), split=3).means, m, rtol=1e-4, atol=1e-4)


def test_conditional_sampling_moments():
    rng = np.random.default_rng(31)
    logits, means, covs, scale_tril = random_mixture(rng, 3, 3, spread=2.0)
    cond = _gm(logits, means, scale_tril).condition(f32(rng.normal(size=(4, 1))), split=1)
    x = np.asarray(cond.sample(jax.random.key(1), 100_000), np.float64)  # [4, n, 2]
    assert x.shape == (4, 100_000, 2)
    np.testing.assert_allclose(x.mean(1), cond.mean(), atol=0.03 * float(np.abs(cond.covariance()).max()) ** 0.5 + 0.01)
    for i in range(4):
        np.testing.assert_allclose(np.cov(x[i].T), cond.covariance()[i], atol=0.05 * np.abs(cond.covariance()[i]).max())


def test_jit_vmap_grad():
    rng = np.random.default_rng(40)
    logits, means, _, scale_tril = random_mixture(rng, 3, 4)
    gm = _gm(logits, means, scale_tril)
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
    with pytest.raises(ValueError, match="scale_tril must have shape"):
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


@pytest.mark.parametrize(
    "k,d,chunk",
    [(1, 5, 1 << 20), (1, 130, 1 << 20), (3, 8, 64), (5, 13, 100), (3, 256, 1 << 12), (9, 20, 200), (12, 130, 1 << 14)],
)
def test_mahalanobis_kernels_value_and_gradient(k, d, chunk):
    """The hand-written gradients (GEMMs in N-chunks, both residual layouts; for K = 1 also
    the triangular-solve kernel used off CPU) against float64 numpy values and JAX's own
    autodiff of a plain solve_triangular formulation."""
    rng = np.random.default_rng(k * 1000 + d)
    n = 37
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    scale_tril = np.tril(a, -1) + np.eye(d) * rng.uniform(0.5, 1.5, size=(k, 1, d))
    z, means, g = rng.normal(size=(n, d)), rng.normal(size=(k, d)), rng.normal(size=(n, k))

    def ours(z, means, scale_tril):
        return gje_jax.component_log_probs(z, means, scale_tril, chunk_elements=chunk)[1]

    if k == 1:  # also the triangular-solve kernel that GPU and TPU use for K = 1
        from gje_jax._mahalanobis import _mahalanobis_one

        solve = lambda z, means, scale_tril: _mahalanobis_one(z, means[0], jnp.tril(scale_tril[0]))[:, None]
        kernels = [ours, solve]
    else:
        kernels = [ours]

    def plain(z, means, scale_tril):
        r = z[None] - means[:, None]  # [K, N, D]
        y = jax.vmap(lambda l, rk: jax.scipy.linalg.solve_triangular(l, rk.T, lower=True))(scale_tril, r)
        return jnp.sum(y * y, axis=1).T

    y64 = np.stack([np.linalg.solve(scale_tril[j], (z - means[j]).T) for j in range(k)])  # [K, D, N]
    loss = lambda f: lambda *a: jnp.sum(f32(g) * f(*a))
    ref = jax.grad(loss(plain), argnums=(0, 1, 2))(f32(z), f32(means), f32(scale_tril))
    # d/dz analytically in float64: sum_k 2 g_nk Sigma_k^{-1} (z_n - mu_k).
    dz = sum(2 * g[:, j : j + 1] * np.linalg.solve(scale_tril[j].T, y64[j]).T for j in range(k))
    for kernel in kernels:
        np.testing.assert_allclose(kernel(f32(z), f32(means), f32(scale_tril)), (y64**2).sum(1).T, rtol=2e-4, atol=2e-4)
        got = jax.grad(loss(kernel), argnums=(0, 1, 2))(f32(z), f32(means), f32(scale_tril))
        for a, b in zip(got, ref):
            a, b = np.asarray(a), np.asarray(b)
            if a.ndim == 3:
                a, b = np.tril(a), np.tril(b)
            assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b)
        np.testing.assert_allclose(got[0], dz, rtol=1e-3, atol=1e-3)


def _single_gaussian_log_prob_by_solve(z, mu, l):
    """log N(z | mu[0], l[0] l[0]^T) through the triangular-solve kernel GPU and TPU use."""
    from gje_jax._mahalanobis import _mahalanobis_one

    maha = _mahalanobis_one(z, mu[0], jnp.tril(l[0]))
    return -0.5 * maha - jnp.sum(jnp.log(jnp.diagonal(l[0]))) - 0.5 * z.shape[1] * np.log(2 * np.pi)


@pytest.mark.parametrize("kernel", ["log_prob", "solve"])
def test_single_gaussian_under_vmap_matches_and_avoids_batched_lapack(kernel):
    """K = 1 densities under vmap, against per-item evaluation and scipy. On CPU the public
    path is matmuls only; the triangular-solve kernel (GPU, TPU) must switch to matmuls under
    vmap over factors (batched LAPACK gradients deadlock jaxlib 0.10.x on 2 cores) and fold a
    vmap over points into one solve."""
    rng = np.random.default_rng(7)
    b, n, d = 3, 11, 6
    zs = f32(rng.normal(size=(b, n, d)))
    mus = f32(rng.normal(size=(b, 1, d)))
    ls = f32(np.tril(rng.normal(size=(b, 1, d, d))) * 0.3 + 2.0 * np.eye(d))

    def nll(z, mu, l):
        if kernel == "solve":
            return -jnp.sum(_single_gaussian_log_prob_by_solve(z, mu, l))
        return -jnp.sum(GaussianMixture(jnp.zeros(1), mu, l).log_prob(z))

    grad = jax.value_and_grad(nll, argnums=(0, 1, 2))
    if kernel == "log_prob":  # on CPU no LAPACK call at all (OpenBLAS's threads spin after one)
        assert "custom_call" not in jax.jit(grad).lower(zs[0], mus[0], ls[0]).as_text()
    batched = jax.jit(jax.vmap(grad))
    assert "custom_call" not in batched.lower(zs, mus, ls).as_text()
    got = batched(zs, mus, ls)
    for i in range(b):
        ref_val = sum(
            -scipy.stats.multivariate_normal(mus[i, 0], ls[i, 0] @ ls[i, 0].T).logpdf(np.asarray(zs[i], np.float64))
        )
        np.testing.assert_allclose(got[0][i], ref_val, rtol=1e-5)
        one = grad(zs[i], mus[i], ls[i])
        for a, r in zip(got[1], one[1]):
            np.testing.assert_allclose(a[i], r, rtol=1e-4, atol=1e-5)
    shared = jax.jit(jax.vmap(grad, in_axes=(0, None, None)))
    if kernel == "solve":  # one unbatched solve with the points of every item as its rows
        hlo = shared.lower(zs, mus[0], ls[0]).compile().as_text()
        assert 'num_batch_dims="0"' in hlo and 'num_batch_dims="1"' not in hlo
    for i in range(b):
        np.testing.assert_allclose(shared(zs, mus[0], ls[0])[0][i], grad(zs[i], mus[0], ls[0])[0], rtol=1e-5)


@pytest.mark.parametrize("shape,axis", [((5, 7, 3), 1), ((3, 6, 5), 2), ((4, 1), 1), ((2, 513), 1), ((2, 3, 1), 2)])
def test_sum_of_squares_matches_numpy(shape, axis):
    """The distances' sum of squares: the dispatcher, the CPU branch (pairwise halving, odd
    lengths included) and the other backends' branch, with and without the subtracted
    shift, against float64 numpy."""
    from gje_jax import _mahalanobis as mixture

    rng = np.random.default_rng(len(shape) * 100 + shape[axis])
    y = rng.normal(size=shape) * 3
    shift = rng.normal(size=(1,) + shape[1:])
    for fn in (
        lambda *a: mixture._sum_of_squares(*a[:1], axis, *a[1:]),
        functools.partial(mixture._pairwise_sum_of_squares, axis=axis),
        functools.partial(mixture._reduced_sum_of_squares, axis=axis),
    ):
        np.testing.assert_allclose(jax.jit(fn)(f32(y)), np.sum(y**2, axis), rtol=1e-6)
        np.testing.assert_allclose(jax.jit(fn)(f32(y), f32(shift)), np.sum((y - shift) ** 2, axis), rtol=1e-6)
