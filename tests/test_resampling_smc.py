"""Resampling schemes and the SMC memory bank against closed forms and numpy/scipy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from gje_jax import losses
from gje_jax.remedies import resampling, smc
from tests.helpers import random_spd

# M * W holds no integer: floor(M * w) of an exact integer depends on float32 rounding
# (50 * 0.02 came out 0.99999994 under jit on jax 0.12.1).
W = np.array([0.328, 0.022, 0.17, 0.0, 0.25, 0.125, 0.105], np.float64)
LOGW = np.log(np.where(W > 0, W, 1e-300)).astype(np.float32)
LOGW[3] = -np.inf
M = 50
assert abs(W.sum() - 1) < 1e-12
KEYS = 2000


def _counts(scheme):
    fn = jax.jit(jax.vmap(lambda k: resampling.get_scheme(scheme)(k, jnp.asarray(LOGW), M)))
    idx = np.asarray(fn(jax.random.split(jax.random.key(0), KEYS)))
    assert idx.shape == (KEYS, M) and idx.dtype == np.int32
    return np.stack([np.bincount(row, minlength=len(W)) for row in idx])


@pytest.mark.parametrize("scheme", sorted(resampling.SCHEMES))
def test_resampling_is_unbiased(scheme):
    counts = _counts(scheme)
    mean, se = counts.mean(0), counts.std(0, ddof=1) / np.sqrt(KEYS)
    expected = M * W
    # Within 4 standard errors (the deterministic schemes have tiny se: add a float floor).
    assert np.all(np.abs(mean - expected) <= 4 * se + 1e-3), (scheme, mean, expected, se)
    assert np.all(counts[:, 3] == 0), "a zero-weight index was drawn"


def test_systematic_and_stratified_bounds():
    expected = M * W
    sys_counts = _counts("systematic")
    assert np.all(np.abs(sys_counts - expected) < 1.0)
    # Stratified: each count is the number of strata hits; |count - M w| < 2 holds
    # because at most the two boundary strata of an index's interval are uncertain.
    strat = _counts("stratified")
    assert np.all(np.abs(strat - expected) < 2.0)
    # Multinomial has no such bound: it must violate the systematic one sometimes.
    assert np.any(np.abs(_counts("multinomial") - expected) >= 1.0)


def test_residual_deterministic_part():
    floor = np.floor(M * W)
    np.testing.assert_array_equal(np.asarray(resampling.residual_counts(LOGW, M)), floor)
    assert np.all(_counts("residual") >= floor)


def test_ess_limits_and_errors():
    assert float(resampling.ess(jnp.zeros(64))) == pytest.approx(64.0, rel=1e-5)
    one_hot = jnp.full((64,), -jnp.inf).at[5].set(0.0)
    assert float(resampling.ess(one_hot)) == pytest.approx(1.0, rel=1e-6)
    w = np.random.default_rng(0).dirichlet(np.ones(30))
    assert float(resampling.ess(jnp.log(w))) == pytest.approx(1.0 / np.sum(w**2), rel=1e-4)
    with pytest.raises(ValueError, match="Unknown resampling scheme 'sistematic'"):
        resampling.get_scheme("sistematic")
    with pytest.raises(ValueError, match=r"log_weights must have shape \[M\]"):
        resampling.systematic(jax.random.key(0), jnp.zeros((2, 3)), 4)


def test_kernel_densities_match_scipy():
    rng = np.random.default_rng(1)
    d, m, n = 3, 40, 25
    centres = rng.normal(size=(m, d)) * 2
    lw = rng.normal(size=m)
    a = rng.normal(size=(d, d))
    cov = a @ a.T + 0.3 * np.eye(d)
    x = rng.normal(size=(n, d)) * 2
    comp = np.stack([stats.multivariate_normal(mu, cov).logpdf(x) for mu in centres], axis=1)
    lwn = lw - logsumexp(lw)
    ref = logsumexp(comp + lwn, axis=1)
    scale_tril = np.linalg.cholesky(cov)
    got = smc.kernel_log_prob(
        jnp.asarray(x, jnp.float32), jnp.asarray(centres, jnp.float32), jnp.asarray(lw), scale_tril
    )
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    # Conditional: log p(t | c) = log p(c, t) - log p(c), with p(c) the marginal kernel mixture.
    split = 1
    comp_c = np.stack(
        [stats.multivariate_normal(mu[:split], cov[:split, :split]).logpdf(x[:, :split]) for mu in centres], axis=1
    )
    ref_c = ref - logsumexp(comp_c.reshape(n, m) + lwn, axis=1)
    got_c = smc.kernel_conditional_log_prob(
        jnp.asarray(x[:, :split], jnp.float32), jnp.asarray(x[:, split:], jnp.float32), centres, lw, scale_tril
    )
    np.testing.assert_allclose(got_c, ref_c, rtol=1e-4, atol=1e-4)


def test_bank_fills_like_a_ring_then_replaces_lowest_weights():
    bank = smc.ParticleBank.empty(10, 2)
    z1 = jnp.arange(8.0).reshape(4, 2)
    bank = smc.insert(bank, z1)
    assert int(bank.size()) == 4
    np.testing.assert_array_equal(np.asarray(bank.particles[:4]), np.asarray(z1))
    np.testing.assert_allclose(np.exp(bank.normalized_log_weights()[:4]), 0.25, rtol=1e-6)
    bank = smc.insert(bank, z1 + 100)
    assert int(bank.size()) == 8
    # Make slots 0 and 5 the lightest, then insert 4 rows into a bank with 2 empty slots.
    lw = jnp.log(jnp.array([0.01, 0.2, 0.2, 0.2, 0.2, 0.02, 0.2, 0.2, 1e-30, 1e-30]))
    lw = jnp.where(jnp.arange(10) < 8, lw, -jnp.inf)
    bank = bank.replace(log_weights=lw)
    bank = smc.insert(bank, -jnp.ones((4, 2)))
    got = set(np.where(np.asarray(bank.particles)[:, 0] == -1)[0].tolist())
    assert got == {8, 9, 0, 5}
    assert int(bank.size()) == 10
    assert float(jnp.sum(jnp.exp(bank.log_weights))) == pytest.approx(1.0, rel=1e-5)
    assert np.all(np.asarray(bank.ages)[[0, 5, 8, 9]] == 0) and np.all(np.asarray(bank.ages)[[1, 2]] == 2)


def test_reweight_favours_particles_near_the_batch_and_resamples_when_degenerate():
    m, d = 64, 2
    rng = np.random.default_rng(0)
    far = rng.normal(size=(m // 2, d)) + 10.0
    near = rng.normal(size=(m // 2, d)) * 0.3
    bank = smc.insert(smc.ParticleBank.empty(m, d), jnp.asarray(np.concatenate([far, near]), jnp.float32))
    assert float(bank.ess()) == pytest.approx(m, rel=1e-5)
    z = jnp.asarray(rng.normal(size=(32, d)) * 0.3, jnp.float32)
    scale_tril = 0.5 * jnp.eye(d)
    bank2 = smc.reweight(bank, z, scale_tril)
    w = np.exp(np.asarray(bank2.normalized_log_weights()))
    assert w[m // 2 :].sum() > 0.999
    assert float(bank2.ess()) < 0.5 * m
    res, did = smc.resample(bank2, jax.random.key(0), ess_threshold=0.5)
    assert bool(did) and int(res.num_resamples) == 1
    assert float(res.ess()) == pytest.approx(m, rel=1e-5)
    # Resampled copies come from the near half only.
    assert np.all(np.abs(np.asarray(res.particles)) < 5.0)
    # A threshold outside (0, 1] is refused.
    with pytest.raises(ValueError, match=r"ess_threshold must be in \(0, 1\]"):
        smc.resample(bank2, jax.random.key(0), ess_threshold=1.5)


def test_tempered_reweighting_raises_the_kde_to_a_power():
    m, d, n = 12, 3, 20
    rng = np.random.default_rng(5)
    particles = rng.normal(size=(m, d)) * 2
    z = rng.normal(size=(n, d))
    h = random_spd(rng, d)
    bank = smc.insert(smc.ParticleBank.empty(m, d), jnp.asarray(particles, jnp.float32))
    scale_tril = jnp.asarray(np.linalg.cholesky(h), jnp.float32)
    # KDE_z(P_m) = (1/N) sum_n N(P_m | z_n, H), by scipy.
    log_kde = np.array(
        [logsumexp([stats.multivariate_normal(zn, h).logpdf(p) for zn in z]) - np.log(n) for p in particles]
    )
    for beta in (0.0, 0.1, 1.0):
        got = np.asarray(smc.reweight(bank, jnp.asarray(z, jnp.float32), scale_tril, tempering=beta).log_weights)
        want = beta * log_kde - logsumexp(beta * log_kde)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="tempering"):
        smc.reweight(bank, jnp.asarray(z, jnp.float32), scale_tril, tempering=1.5)


def test_bank_contrastive_with_uniform_weights_is_moco_infonce():
    """Uniform bank weights + isotropic kernel tau: gmje_contrastive with the bank as
    extra candidates equals InfoNCE against a queue (computed here in numpy)."""
    rng = np.random.default_rng(3)
    n, d, q, tau = 16, 8, 48, 0.2
    c, t, queue = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(q, d))
    bank = smc.insert(smc.ParticleBank.empty(64, d), jnp.asarray(queue, jnp.float32))
    filled_lw = bank.log_weights - jax.nn.logsumexp(bank.log_weights) + jnp.log(bank.size().astype(jnp.float32))
    got, _ = losses.gmje_contrastive(
        jnp.asarray(c), jnp.asarray(t), tau=tau, extra_targets=bank.particles, extra_log_weights=filled_lw
    )
    un = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    cn, tn, kn = un(c), un(t), un(queue)
    logits = np.concatenate([cn @ tn.T, cn @ kn.T], axis=1) / tau
    ref = -np.mean(np.diag(logits[:, :n]) - logsumexp(logits, axis=1))
    assert float(got) == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_bank_update_is_jittable_and_bounded():
    m, d = 32, 3
    upd = jax.jit(lambda b, z, k: smc.update(b, z, k, 0.3 * jnp.eye(d), ess_threshold=0.9, rejuvenation=0.1))
    bank = smc.ParticleBank.empty(m, d)
    key = jax.random.key(0)
    for i in range(6):
        z = jax.random.normal(jax.random.fold_in(key, i), (12, d)) + i
        bank, met = upd(bank, z, jax.random.fold_in(key, 100 + i))
        assert int(bank.size()) == min(12 * (i + 1), m)
        assert np.all(np.isfinite(np.asarray(bank.particles)))
        assert float(jnp.sum(jnp.exp(bank.log_weights))) == pytest.approx(1.0, rel=1e-4)
    assert int(bank.num_resamples) >= 1


def _scipy_kde(points, centres, cov, scales=None, log_weights=None):
    """log sum_m w_m N(x | centres_m, s_m^2 cov) for each x in points, by scipy."""
    m = len(centres)
    scales = np.ones(m) if scales is None else scales
    lw = np.full(m, -np.log(m)) if log_weights is None else log_weights - logsumexp(log_weights)
    comp = np.stack(
        [np.atleast_1d(stats.multivariate_normal(mu, s * s * cov).logpdf(points)) for mu, s in zip(centres, scales)], 1
    )
    return logsumexp(comp.reshape(len(points), m) + lw, axis=1)


def test_leave_one_out_kde_matches_scipy():
    rng = np.random.default_rng(11)
    n, d = 9, 3
    z = rng.normal(size=(n, d)) * 2
    h = random_spd(rng, d)
    want = np.array([_scipy_kde(z[i : i + 1], np.delete(z, i, 0), h)[0] for i in range(n)])
    got = smc.leave_one_out_log_kde(jnp.asarray(z, jnp.float32), jnp.asarray(np.linalg.cholesky(h), jnp.float32))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_incremental_weights_are_the_density_ratio_since_insertion():
    """Untempered, after batches Z_0 (inserted), Z_1, ..., Z_k a particle's weight is
    proportional to KDE_{Z_k}(P) / KDE_{Z_0 without P}(P): the increments telescope."""
    rng = np.random.default_rng(12)
    d, n = 2, 24
    h = random_spd(rng, d) * 0.5
    scale_tril = jnp.asarray(np.linalg.cholesky(h), jnp.float32)
    z0 = rng.normal(size=(n, d))
    bank, _ = smc.update(smc.ParticleBank.empty(n, d), jnp.asarray(z0, jnp.float32), jax.random.key(0), scale_tril)
    batches = [rng.normal(size=(n, d)) + shift for shift in ([0.5, 0.0], [1.0, -0.5], [1.5, -1.0])]
    for zk in batches:
        bank = smc.reweight(bank, jnp.asarray(zk, jnp.float32), scale_tril)
    p = np.asarray(bank.particles, np.float64)
    np.testing.assert_allclose(p, z0, atol=1e-6)
    loo = np.array([_scipy_kde(z0[i : i + 1], np.delete(z0, i, 0), h)[0] for i in range(n)])
    want = _scipy_kde(p, batches[-1], h) - loo
    want -= logsumexp(want)
    np.testing.assert_allclose(np.asarray(bank.log_weights), want, rtol=1e-4, atol=2e-4)
    # The whole-density rule instead multiplies by every KDE.
    old, _ = smc.update(
        smc.ParticleBank.empty(n, d), jnp.asarray(z0, jnp.float32), jax.random.key(0), scale_tril, incremental=False
    )
    for zk in batches:
        old = smc.reweight(old, jnp.asarray(zk, jnp.float32), scale_tril, incremental=False)
    want_old = sum(_scipy_kde(p, zk, h) for zk in batches)
    np.testing.assert_allclose(np.asarray(old.log_weights), want_old - logsumexp(want_old), rtol=1e-4, atol=2e-4)


def test_tempered_increments_are_deferred_not_lost():
    """With a fixed tempering delta and the same batch every step, the log-weights reach
    (1 - (1 - delta)^k) of the full ratio after k steps (the remainder carries over)."""
    rng = np.random.default_rng(13)
    d, n = 2, 16
    scale_tril = jnp.asarray(0.7 * np.eye(d), jnp.float32)
    bank, _ = smc.update(
        smc.ParticleBank.empty(n, d), jnp.asarray(rng.normal(size=(n, d)), jnp.float32), jax.random.key(0), scale_tril
    )
    start = np.asarray(bank.log_weights)
    z = jnp.asarray(rng.normal(size=(n, d)) + 1.0, jnp.float32)
    full = np.asarray(smc.reweight(bank, z, scale_tril).log_weights) - start
    delta = 0.3
    for k in range(1, 6):
        bank = smc.reweight(bank, z, scale_tril, tempering=delta)
        got = np.asarray(bank.log_weights) - start
        want = (1 - (1 - delta) ** k) * full
        np.testing.assert_allclose(got - got.mean(), want - want.mean(), rtol=1e-4, atol=1e-4)


def test_incremental_bank_represents_a_stationary_density():
    """Batches from N(0, I) through `update` (adaptive tempering, resampling, insertion): the
    incremental bank's weighted covariance stays near I (it represents the density); the
    rule that multiplies by the KDE every step sharpens it onto the mode (w ~ p^T)."""
    m, d, n = 256, 2, 64
    scale_tril = jnp.asarray(0.4 * np.eye(d), jnp.float32)
    step = jax.jit(functools.partial(smc.update, ess_target=0.5), static_argnames=("incremental",))
    spread = {}
    for incremental in (True, False):
        rng = np.random.default_rng(14)
        bank, traces = smc.ParticleBank.empty(m, d), []
        for i in range(80):
            z = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
            bank, metrics = step(bank, z, jax.random.key(i), scale_tril, incremental=incremental)
            if i >= 10:
                traces.append(np.trace(np.asarray(smc.bank_covariance(bank))) / d)
                assert float(metrics["bank_ess_fraction"]) >= 0.5 - 1e-3
        spread[incremental] = np.mean(traces)
    assert 0.85 < spread[True] < 1.2, spread
    assert spread[False] < 0.5, spread


def test_incremental_update_leaves_the_ess_at_the_threshold_after_insertion():
    """A full bank whose oldest particles weigh more than the mean and one young particle
    more still: overwriting the oldest with mean-weight newcomers drops the ESS under the threshold (checked with `insert` alone);
    `update` resamples after insertion, so the next step starts at or above it."""
    m, d, n = 16, 2, 4
    rng = np.random.default_rng(16)
    bank = smc.insert(smc.ParticleBank.empty(m, d), jnp.asarray(rng.normal(size=(m, d)), jnp.float32))
    lw = np.zeros(m)
    lw[:n] = np.log(2.6)  # heavier than the mean, and oldest
    lw[n] = np.log(8.2)  # one young particle heavier still
    bank = bank.replace(
        log_weights=jnp.asarray(lw - np.log(np.exp(lw).sum()), jnp.float32),
        ages=jnp.asarray(np.r_[np.full(n, 9), np.zeros(m - n)], jnp.int32),
    )
    assert float(bank.ess()) >= 0.5 * m  # the reweighting alone would not resample
    z = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    alone = smc.insert(bank, z, oldest=True)
    assert float(alone.ess()) < 0.5 * m  # the hazard the resampling removes
    # A kernel so wide that the reweighting barely moves the weights (delta = 1 kept).
    new, metrics = smc.update(bank, z, jax.random.key(0), jnp.asarray(100.0 * np.eye(d), jnp.float32), ess_target=0.5)
    assert float(metrics["resampled"]) == 1.0
    assert float(new.ess()) >= 0.5 * m
    assert int(new.num_resamples) == 1


def test_local_bandwidths_match_brute_force():
    rng = np.random.default_rng(15)
    m, d, k, scale = 12, 3, 3, 0.5
    pts = rng.normal(size=(9, d))
    pts = np.concatenate([pts, pts[:1]])  # a copy (as resampling makes): no neighbour
    bank = smc.insert(smc.ParticleBank.empty(m, d), jnp.asarray(pts, jnp.float32))
    got = np.asarray(smc.local_bandwidths(bank, k, scale))
    for i, p in enumerate(pts):
        dist = np.linalg.norm(pts - p, axis=1)
        dist = np.sort(dist[dist > 0])
        assert got[i] == pytest.approx(scale * dist[k - 1] / np.sqrt(d), rel=1e-4), i
    assert np.all(got[len(pts) :] == 1.0)  # empty slots
    # Fewer than k distinct neighbours: the farthest one.
    two = smc.insert(smc.ParticleBank.empty(4, 1), jnp.array([[0.0], [2.0]]))
    assert np.asarray(smc.local_bandwidths(two, 3, 1.0))[:2].tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="k must be"):
        smc.local_bandwidths(two, 0, 1.0)


def test_kernel_densities_with_per_centre_scales_match_scipy():
    rng = np.random.default_rng(16)
    d, m, n = 3, 30, 20
    centres = rng.normal(size=(m, d)) * 2
    lw = rng.normal(size=m)
    scales = rng.uniform(0.2, 2.0, size=m)
    cov = random_spd(rng, d)
    x = rng.normal(size=(n, d)) * 2
    scale_tril = jnp.asarray(np.linalg.cholesky(cov), jnp.float32)
    args = (jnp.asarray(centres, jnp.float32), jnp.asarray(lw, jnp.float32), scale_tril)
    got = smc.kernel_log_prob(jnp.asarray(x, jnp.float32), *args, centre_scales=jnp.asarray(scales, jnp.float32))
    want = _scipy_kde(x, centres, cov, scales, lw)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    got_c = smc.kernel_conditional_log_prob(
        jnp.asarray(x[:, :1], jnp.float32), jnp.asarray(x[:, 1:], jnp.float32), *args, centre_scales=scales
    )
    want_c = want - _scipy_kde(x[:, :1], centres[:, :1], cov[:1, :1], scales, lw)
    np.testing.assert_allclose(got_c, want_c, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="positive"):
        smc.kernel_log_prob(jnp.asarray(x, jnp.float32), *args, centre_scales=-jnp.ones(m))
    with pytest.raises(ValueError, match=r"\[M\]"):
        smc.kernel_log_prob(jnp.asarray(x, jnp.float32), *args, centre_scales=jnp.ones(m + 1))


def _lse(x, axis):
    """log sum exp over axis (numpy; -inf rows stay -inf)."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.log(np.sum(np.exp(x - m), axis=axis)) + np.squeeze(m, axis)


def _loo_conditional_score(pts, w, dc, h_c, h_t):
    """sum_i w_i log p_{-i}(t_i | c_i) / sum_i w_i (kernel diag(h_c^2 I, h_t^2 I)) by numpy
    over all pairs, leaving out i and its copies."""
    other = np.any(pts[:, None] != pts[None], axis=-1)  # [N, N]: j is not i or a copy of i
    rc = np.sum((pts[:, None, :dc] - pts[None, :, :dc]) ** 2, -1) / h_c**2
    rt = np.sum((pts[:, None, dc:] - pts[None, :, dc:]) ** 2, -1) / h_t**2
    lw = np.where(other, np.log(w)[None], -np.inf)
    dt = pts.shape[1] - dc
    ll = _lse(lw - 0.5 * (rc + rt), 1) - _lse(lw - 0.5 * rc, 1) - dt * np.log(h_t * np.sqrt(2 * np.pi))
    keep = other.any(1)
    return np.average(ll[keep], weights=w[keep])


def test_fit_bandwidths_maximises_the_leave_one_out_conditional_likelihood():
    rng = np.random.default_rng(3)
    n = 150
    c = rng.uniform(-2, 2, size=(n, 1))
    t = np.sin(2 * c) + 0.2 * rng.normal(size=(n, 1))
    pts = np.concatenate([c, t], 1)
    pts[-1] = pts[0]  # a copy (as resampling makes): not a neighbour of particle 0
    bank = smc.insert(smc.ParticleBank.empty(n + 10, 2), jnp.asarray(pts, jnp.float32))  # 10 empty slots
    lw = 0.5 * rng.normal(size=n)
    bank = bank.replace(log_weights=bank.log_weights.at[:n].set(jnp.asarray(lw, jnp.float32)))
    w = np.exp(lw - logsumexp(lw))
    (h_c, h_t), nll = smc.fit_bandwidths(bank, 1, jnp.array([9.0, 9.0]), num_queries=n + 10)
    fine = np.exp(np.linspace(np.log(0.01), np.log(2.0), 41))
    ref = np.array([[_loo_conditional_score(pts, w, 1, a, b) for b in fine] for a in fine])
    # Within 0.01 nats of the best of a fine grid of both widths (the search is coarse-to-
    # fine with parabolas in log h), and the reported NLL is the score at the widths returned.
    at = _loo_conditional_score(pts, w, 1, float(h_c), float(h_t))
    best = np.unravel_index(ref.argmax(), ref.shape)
    assert at >= ref.max() - 0.01, ((float(h_c), float(h_t)), (fine[best[0]], fine[best[1]]))
    assert -float(nll) == pytest.approx(at, abs=1e-4)
    # One width for both loses here: the best single width scores lower.
    assert np.diag(ref).max() < ref.max() - 0.02
    # Nothing to leave one out against: the previous widths, no score.
    for empty in (smc.ParticleBank.empty(8, 3), smc.insert(smc.ParticleBank.empty(8, 3), jnp.ones((5, 3)))):
        kept, nll0 = smc.fit_bandwidths(empty, 2, jnp.array([9.0, 8.0]))
        assert np.asarray(kept).tolist() == [9.0, 8.0] and np.isnan(float(nll0))
    with pytest.raises(ValueError, match="split must be"):
        smc.fit_bandwidths(bank, 2, jnp.ones(2))
    with pytest.raises(ValueError, match="previous must have shape"):
        smc.fit_bandwidths(bank, 1, jnp.ones(3))


def test_fit_bandwidths_on_held_out_queries_predicts_new_targets_about_as_well_as_the_best_widths():
    # A bank of pairs t = 0.8 c + 0.3 eps and a batch of new pairs: the widths fitted to the
    # batch maximise its conditional likelihood (numpy, a grid of both widths), and on
    # further fresh pairs they are within 0.02 nats of the best widths.
    rng = np.random.default_rng(4)

    def pairs(n):
        c = rng.normal(size=(n, 1))
        return np.concatenate([c, 0.8 * c + 0.3 * rng.normal(size=(n, 1))], 1).astype(np.float32)

    bank_pts, batch, test = pairs(512), pairs(256), pairs(2000)
    bank = smc.insert(smc.ParticleBank.empty(600, 2), jnp.asarray(bank_pts))  # 88 empty slots
    widths, nll = smc.fit_bandwidths(bank, 1, jnp.ones(2), jnp.asarray(batch))

    def squares(q):  # squared context and target differences to every particle, [n, M] each
        return [(q[:, None, i] - bank_pts[None, :, i]).astype(np.float64) ** 2 for i in (0, 1)]

    def numpy_nll(sq, h_c, h_t):
        rc, rt = sq[0] / h_c**2, sq[1] / h_t**2
        return -np.mean(_lse(-0.5 * (rc + rt), 1) - _lse(-0.5 * rc, 1) - np.log(h_t * np.sqrt(2 * np.pi)))

    on_batch, on_test = squares(batch), squares(test)
    grid = np.exp(np.linspace(np.log(0.03), np.log(0.8), 15))
    batch_grid = np.array([[numpy_nll(on_batch, a, b) for b in grid] for a in grid])
    at = numpy_nll(on_batch, *np.asarray(widths, np.float64))
    assert at <= batch_grid.min() + 0.005 and float(nll) == pytest.approx(at, abs=1e-4)
    best_test = min(numpy_nll(on_test, a, b) for a in grid[::2] for b in grid[::2])
    assert numpy_nll(on_test, *np.asarray(widths, np.float64)) <= best_test + 0.02
    # The true conditional N(0.8 c, 0.3^2) is the floor (its NLL is 0.5 log(2 pi e 0.09)).
    assert best_test >= 0.5 * np.log(2 * np.pi * np.e * 0.09) - 0.03
    with pytest.raises(ValueError, match="queries must have shape"):
        smc.fit_bandwidths(bank, 1, jnp.ones(2), jnp.ones((4, 3)))
