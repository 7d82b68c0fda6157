"""GJE/GMJE losses, the trace trap, and the contrastive limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
import sklearn.mixture

import gje_jax
from gje_jax import losses
from tests.helpers import log_softmax, random_mixture, random_spd

f32 = lambda x: jnp.asarray(x, jnp.float32)


def _views(rng, n=256, dc=4, dt=4, scale=1.0):
    c = rng.normal(size=(n, dc))
    t = c @ rng.normal(size=(dc, dt)) * 0.5 + rng.normal(size=(n, dt))
    return f32(c * scale), f32(t * scale)


def test_trace_trap_identity():
    rng = np.random.default_rng(0)
    c, t = _views(rng, n=300, dc=5, dt=3)
    rep = jax.jit(lambda c, t: losses.trace_trap_report(c, t, eps_rel=0.0, eps_abs=0.0))(c, t)
    assert float(rep["mahalanobis_mean"]) == pytest.approx(8.0, abs=1e-3)
    assert float(rep["dim"]) == 8
    # Its gradient vanishes; the log-det's does not (that is the collapse force).
    assert float(rep["grad_norm_mahalanobis"]) < 1e-4 * float(rep["grad_norm_logdet"])
    assert float(rep["grad_norm_logdet"]) > 1e-2


def test_trace_trap_with_ridge_falls_with_scale():
    rng = np.random.default_rng(1)
    z = f32(rng.normal(size=(200, 6)))
    big = losses.trace_trap_report(z, eps_rel=0.0, eps_abs=1e-2)
    small = losses.trace_trap_report(0.01 * z, eps_rel=0.0, eps_abs=1e-2)
    np.testing.assert_allclose(big["mahalanobis_mean"], big["mahalanobis_expected"], rtol=1e-3)
    np.testing.assert_allclose(small["mahalanobis_mean"], small["mahalanobis_expected"], rtol=1e-3)
    assert float(small["mahalanobis_mean"]) < 0.5 * float(big["mahalanobis_mean"])


def test_gje_batch_loss_matches_scipy_and_numpy():
    rng = np.random.default_rng(2)
    c, t = _views(rng)
    eps_rel, eps_abs = 1e-3, 1e-6
    loss, m = losses.gje_loss(c, t, lambda_geo=1.0, eps_rel=eps_rel, eps_abs=eps_abs)
    z = np.concatenate([np.asarray(c), np.asarray(t)], 1).astype(np.float64)

    def reg(s):
        return s + (eps_rel * np.trace(s) / s.shape[0] + eps_abs) * np.eye(s.shape[0])

    s = reg(np.cov(z.T, bias=True))
    nll = -scipy.stats.multivariate_normal(z.mean(0), s).logpdf(z).mean()
    geo = (
        0.5 * np.linalg.slogdet(reg(np.cov(z[:, :4].T, bias=True)))[1]
        + 0.5 * np.linalg.slogdet(reg(np.cov(z[:, 4:].T, bias=True)))[1]
    )
    np.testing.assert_allclose(m["nll"], nll, rtol=1e-4)
    np.testing.assert_allclose(m["geometry"], geo, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(loss, nll - geo, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m["logdet"], np.linalg.slogdet(s)[1], rtol=1e-4)


def test_gje_scale_invariance_with_geometry_term():
    rng = np.random.default_rng(3)
    c, t = _views(rng)
    base, _ = losses.gje_loss(c, t, lambda_geo=1.0, eps_abs=0.0)
    for s in (1e-2, 0.3, 7.0, 1e2):
        scaled, _ = losses.gje_loss(s * c, s * t, lambda_geo=1.0, eps_abs=0.0)
        np.testing.assert_allclose(scaled, base, atol=2e-4)
    # Without it, shrinking is rewarded by D log s: the trap.
    naive, _ = losses.gje_loss(c, t, lambda_geo=0.0, eps_abs=0.0)
    naive_small, _ = losses.gje_loss(0.1 * c, 0.1 * t, lambda_geo=0.0, eps_abs=0.0)
    np.testing.assert_allclose(naive - naive_small, 8 * np.log(10.0), rtol=1e-4)


def test_gje_batch_loss_equals_negative_mutual_information_plus_constant():
    rng = np.random.default_rng(4)
    vals = []
    for _ in range(3):
        c, t = _views(rng)
        loss, m = losses.gje_loss(c, t, lambda_geo=1.0, eps_rel=0.0, eps_abs=0.0)
        vals.append(float(loss + m["mi"]))
    np.testing.assert_allclose(vals, vals[0], atol=1e-3)  # = D/2 (1 + log 2 pi)
    np.testing.assert_allclose(vals[0], 4.0 * (1 + np.log(2 * np.pi)), atol=1e-3)


def test_gje_ema_and_param_estimators():
    rng = np.random.default_rng(5)
    c, t = _views(rng)
    stats = gje_jax.GaussianStats.zeros(8).update(jnp.concatenate([c, t], 1), 0.9)
    loss_ema, _ = losses.gje_loss(c, t, estimator="ema", density=stats, lambda_geo=0.0)
    fit = gje_jax.fit_gaussian(jnp.concatenate([c, t], 1))
    loss_batch, _ = losses.gje_loss(c, t, lambda_geo=0.0)
    np.testing.assert_allclose(loss_ema, loss_batch, rtol=1e-4)
    # ema: no gradient reaches the statistics; param: it does.
    g_ema = jax.grad(lambda d: losses.gje_loss(c, t, estimator="ema", density=d)[0])(fit)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(g_ema))
    g_par = jax.grad(lambda d: losses.gje_loss(c, t, estimator="param", density=d)[0])(fit)
    assert np.abs(np.asarray(g_par.means)).sum() > 0
    with pytest.raises(ValueError, match="needs `density`"):
        losses.gje_loss(c, t, estimator="param")
    with pytest.raises(ValueError, match="estimator must be one of"):
        losses.gje_loss(c, t, estimator="batc")


def test_gmje_joint_loss_matches_sklearn():
    rng = np.random.default_rng(6)
    logits, means, covs, scale_tril = random_mixture(rng, 4, 6)
    sk = sklearn.mixture.GaussianMixture(4, covariance_type="full")
    sk.weights_, sk.means_, sk.covariances_ = np.exp(log_softmax(logits)), means, covs
    sk.precisions_cholesky_ = np.stack([np.linalg.inv(l).T for l in scale_tril])
    z = rng.normal(size=(128, 6)) * 3
    gm = gje_jax.GaussianMixture(f32(logits), f32(means), f32(scale_tril))
    loss, m = losses.gmje_loss(f32(z[:, :2]), f32(z[:, 2:]), gm, lambda_bal=0.5)
    gbar = sk.predict_proba(z).mean(0)
    kl = np.sum(gbar * (np.log(gbar) - log_softmax(logits)))
    np.testing.assert_allclose(m["nll"], -sk.score_samples(z).mean(), rtol=1e-5)
    np.testing.assert_allclose(m["balance"], kl, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(loss, -sk.score_samples(z).mean() + 0.5 * kl, rtol=1e-4)


def test_gmje_conditional_loss_and_gradients():
    rng = np.random.default_rng(7)
    logits, means, _, scale_tril = random_mixture(rng, 3, 4, spread=1.0)
    z = f32(rng.normal(size=(64, 4)))
    gm = gje_jax.GaussianMixture(f32(logits), f32(means), f32(scale_tril))
    _, m = losses.gmje_loss(z[:, :2], z[:, 2:], gm, objective="conditional")
    ref = -jnp.mean(gm.log_prob(z) - gm.marginal(0, 2).log_prob(z[:, :2]))  # log p(t|c) = log p(z) - log p(c)
    np.testing.assert_allclose(m["nll"], ref, rtol=1e-4)

    raw = gje_jax.linalg.unconstrained_from_scale_tril(f32(scale_tril))

    def obj(params):
        mix = gje_jax.GaussianMixture.from_unconstrained(*params)
        return losses.gmje_loss(z[:, :2], z[:, 2:], mix, lambda_geo=1.0, lambda_bal=0.1)[0]

    grads = jax.jit(jax.grad(obj))((f32(logits), f32(means), raw))
    assert all(np.all(np.isfinite(g)) for g in grads)
    with pytest.raises(ValueError, match="D = 4"):
        losses.gmje_loss(z[:, :2], z[:, 2:3], gm)


def test_gmje_contrastive_equals_infonce_in_the_limit():
    rng = np.random.default_rng(8)
    c, t = f32(rng.normal(size=(64, 16))), f32(rng.normal(size=(64, 16)))
    for tau in (0.05, 0.1, 1.0):
        a, _ = losses.infonce(c, t, tau=tau)
        b, _ = losses.gmje_contrastive(c, t, tau=tau)
        np.testing.assert_allclose(b, a, atol=1e-6 * max(1.0, abs(float(a))), rtol=1e-6)
        # The same with the isotropic covariance given as a matrix.
        b2, _ = losses.gmje_contrastive(c, t, covariance=tau * jnp.eye(16))
        np.testing.assert_allclose(b2, a, rtol=1e-5)


def test_infonce_matches_numpy():
    rng = np.random.default_rng(9)
    c, t = rng.normal(size=(32, 8)), rng.normal(size=(32, 8))
    cn, tn = c / np.linalg.norm(c, axis=1, keepdims=True), t / np.linalg.norm(t, axis=1, keepdims=True)
    logits = cn @ tn.T / 0.2
    one = -np.mean(np.diag(scipy.special.log_softmax(logits, axis=1)))
    other = -np.mean(np.diag(scipy.special.log_softmax(logits.T, axis=1)))
    np.testing.assert_allclose(losses.infonce(f32(c), f32(t), tau=0.2)[0], one, rtol=1e-5)
    np.testing.assert_allclose(
        losses.infonce(f32(c), f32(t), tau=0.2, symmetric=True)[0], 0.5 * (one + other), rtol=1e-5
    )


def test_gmje_contrastive_anisotropic_weights_and_extra_candidates():
    rng = np.random.default_rng(10)
    n, m, d = 16, 8, 5
    c, t, extra = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(m, d))
    cov = random_spd(rng, d)
    lw, elw = rng.normal(size=n), rng.normal(size=m)
    loss, _ = losses.gmje_contrastive(
        f32(c),
        f32(t),
        covariance=f32(cov),
        log_weights=f32(lw),
        extra_targets=f32(extra),
        extra_log_weights=f32(elw),
        normalize=False,
    )
    cands = np.concatenate([t, extra])
    logits = np.stack(
        [np.concatenate([lw, elw]) + scipy.stats.multivariate_normal(c[i], cov).logpdf(cands) for i in range(n)]
    )
    ref = -np.mean(np.diag(scipy.special.log_softmax(logits, axis=1)[:, :n]))
    np.testing.assert_allclose(loss, ref, rtol=1e-4)
    with pytest.raises(ValueError, match="exactly one"):
        losses.gmje_contrastive(f32(c), f32(t))


@pytest.mark.parametrize("n,d", [(3, 16), (64, 8)])
def test_near_singular_and_collapsed_batches_have_finite_gradients(n, d):
    rng = np.random.default_rng(11)
    base = rng.normal(size=(n, 1)) @ rng.normal(size=(1, d))  # rank one
    for z in (base, np.zeros((n, d)), base * 1e-7 + 1.0):
        z = f32(z)
        for lam in (0.0, 1.0):
            val, grad = jax.value_and_grad(
                lambda z: losses.gje_loss(z[:, : d // 2], z[:, d // 2 :], lambda_geo=lam)[0]
            )(z)
            assert np.isfinite(val) and np.all(np.isfinite(grad)), (lam, float(val))


def test_view_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"c \(4, 2\) and t \(5, 2\)"):
        losses.gje_loss(jnp.ones((4, 2)), jnp.ones((5, 2)))
    with pytest.raises(ValueError, match=r"\[N, d_c\]"):
        losses.gje_loss(jnp.ones((4,)), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="same shape"):
        losses.infonce(jnp.ones((4, 2)), jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="at least 1"):
        losses.gje_loss(jnp.ones((0, 2)), jnp.ones((0, 2)))


def test_target_geometry_term_and_conditional_scale_invariance():
    from gje_jax.losses import target_geometry_term

    rng = np.random.default_rng(7)
    c = rng.normal(size=(300, 3)).astype(np.float32)
    t = (c[:, :2] @ rng.normal(size=(2, 2)) + 0.5 * rng.normal(size=(300, 2))).astype(np.float32)
    s = np.cov(t.T, bias=True)
    eps = 1e-4 * np.trace(s) / 2 + 1e-6
    ref = 0.5 * np.linalg.slogdet(s + eps * np.eye(2))[1]
    assert float(target_geometry_term(jnp.asarray(t))) == pytest.approx(ref, rel=1e-4, abs=1e-5)
    # conditional NLL - G_t is invariant to scaling the embeddings and the mixture by s.
    lw, means, covs, scale_tril = random_mixture(rng, 3, 5)
    base = None
    for scale in (0.1, 1.0, 10.0):
        mix = gje_jax.GaussianMixture(jnp.asarray(lw, jnp.float32), means * scale, scale_tril * scale)
        loss, _ = gje_jax.gmje_loss(
            c * scale, t * scale, mix, objective="conditional", lambda_geo=1.0, eps_rel=1e-4, eps_abs=0.0
        )
        base = float(loss) if base is None else base
        assert float(loss) == pytest.approx(base, rel=1e-3, abs=1e-3), scale


def _barlow_twins_reference(a, b, lam, eps=1e-5):
    """Zbontar et al.'s loss in float64 NumPy, written from the paper's definition: a loop over
    the entries of the cross-correlation of the batch-standardised embeddings."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n, d = a.shape
    za = (a - a.mean(0)) / np.sqrt(a.var(0) + eps)
    zb = (b - b.mean(0)) / np.sqrt(b.var(0) + eps)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(za[k, i] * zb[k, j] for k in range(n)) / n
            total += (1.0 - c) ** 2 if i == j else lam * c**2
    return total


@pytest.mark.parametrize("lam", [5e-3, 0.5])
def test_barlow_twins_matches_a_reference_and_its_limits(lam):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(24, 5)) * rng.uniform(0.5, 3.0, size=5) + 2.0
    b = a @ rng.normal(size=(5, 5)) * 0.3 + 0.1 * rng.normal(size=(24, 5))
    loss, metrics = losses.barlow_twins_loss(
        jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), lambda_offdiag=lam
    )
    np.testing.assert_allclose(float(loss), _barlow_twins_reference(a, b, lam), rtol=1e-4)
    # Invariances: a per-dimension affine map of either view leaves the loss unchanged.
    scale, shift = rng.uniform(0.2, 5.0, size=5), rng.normal(size=5)
    moved, _ = losses.barlow_twins_loss(
        jnp.asarray(a * scale + shift, jnp.float32), jnp.asarray(b, jnp.float32), lambda_offdiag=lam
    )
    np.testing.assert_allclose(float(moved), float(loss), rtol=1e-4)
    # Limits: identical decorrelated views reach 0; the off-diagonal term is lam-weighted.
    q, _ = np.linalg.qr(rng.normal(size=(64, 4)))
    white = jnp.asarray((q - q.mean(0)) * 8.0, jnp.float32)
    zero, m = losses.barlow_twins_loss(white, white, lambda_offdiag=lam)
    assert float(m["on_diagonal"]) < 1e-6
    np.testing.assert_allclose(float(zero), lam * float(m["off_diagonal"]), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError):
        losses.barlow_twins_loss(jnp.ones((4, 3)), jnp.ones((4, 2)))
