"""GNG, online EM and the MDN head against independent references (scipy, sklearn,
closed-form densities)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
import scipy.stats
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture as SkGMM

from gje_jax import ConditionalMixture, DiagonalConditionalMixture, methods
from gje_jax.models import MDNHead
from gje_jax.remedies import em, gng
from tests.helpers import random_spd


def _run_gng(xs, capacity, batch=500, cfg=None):
    cfg = cfg or gng.GNGConfig()
    state = gng.GNGState.create(capacity, xs.shape[1])
    upd = jax.jit(lambda s, x: gng.update(s, x, cfg))
    for i in range(0, len(xs), batch):
        state, met = upd(state, jnp.asarray(xs[i : i + batch]))
        assert int(state.num_active()) <= capacity
    return state, met


def test_gng_three_blobs_give_three_components():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    xs = (centres[rng.integers(0, 3, 30000)] + 0.3 * rng.normal(size=(30000, 2))).astype(np.float32)
    state, _ = _run_gng(xs, capacity=24)
    active = np.asarray(state.active)
    edges = np.asarray(state.edges)[np.ix_(active, active)]
    assert np.array_equal(edges, edges.T)
    ncomp, labels = connected_components(edges, directed=False)
    assert ncomp == 3, (ncomp, int(active.sum()))
    # Each component sits on one blob.
    nodes = np.asarray(state.nodes)[active]
    for c in range(3):
        owner = np.argmin(((nodes[labels == c][:, None] - centres[None]) ** 2).sum(-1), axis=1)
        assert len(set(owner.tolist())) == 1


def test_gng_ring_quantisation_beats_kmeans_bound():
    rng = np.random.default_rng(1)
    ang = rng.uniform(0, 2 * np.pi, 30000)
    xs = np.stack([np.cos(ang), np.sin(ang)], 1) * 3 + 0.1 * rng.normal(size=(30000, 2))
    xs = xs.astype(np.float32)
    state, met = _run_gng(xs, capacity=20)
    k = int(state.num_active())
    assert 2 <= k <= 20
    held = xs[:5000]
    qe = float(gng.quantization_error(state, jnp.asarray(held)))
    km = KMeans(n_clusters=k, n_init=3, random_state=0).fit(xs)
    qe_km = float(np.mean(np.min(((held[:, None] - km.cluster_centers_[None]) ** 2).sum(-1), axis=1)))
    assert qe < 1.5 * qe_km, (qe, qe_km, k)
    assert np.isfinite(float(met["gng_quantization_error"]))


def test_gng_update_is_one_scan_and_mixture_is_finite():
    cfg = gng.GNGConfig(insert_every=10, covariance="node")
    state = gng.GNGState.create(8, 3)
    xs = jax.random.normal(jax.random.key(0), (64, 3))
    jaxpr = jax.make_jaxpr(lambda s, x: gng.update(s, x, cfg))(state, xs)
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1
    state, _ = jax.jit(lambda s, x: gng.update(s, x, cfg))(state, xs)
    assert int(state.num_active()) > 2
    mix = gng.mixture(state, floor=1e-3)
    lp = mix.log_prob(xs)
    assert np.all(np.isfinite(np.asarray(lp)))
    w = np.exp(np.asarray(mix.normalized_log_weights()))
    assert np.all(w[~np.asarray(state.active)] == 0)
    iso = gng.GNGState.create(8, 3, covariance="isotropic")
    iso, _ = jax.jit(lambda s, x: gng.update(s, x, gng.GNGConfig(covariance="isotropic")))(iso, xs)
    assert np.all(np.isfinite(np.asarray(gng.mixture(iso).log_prob(xs))))
    with pytest.raises(ValueError, match="covariance must be 'node' or 'isotropic'"):
        gng.GNGConfig(covariance="full")


def _three_component_data(rng, n):
    means = np.array([[0.0, 0.0], [4.0, 1.0], [1.0, 4.5]])
    covs = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.4, 0.0], [0.0, 0.4]], [[0.6, -0.2], [-0.2, 0.8]]])
    weights = np.array([0.5, 0.3, 0.2])
    comp = rng.choice(3, n, p=weights)
    x = np.stack([rng.multivariate_normal(means[c], covs[c]) for c in comp])
    return x.astype(np.float32), means, weights


def test_gng_component_means_are_cell_means_not_neighbour_biased_nodes():
    # Two clusters at 0 and 10 (std 0.1), a graph of two nodes joined by an edge. Each input
    # moves its winner by eps_b towards it and the other node by eps_n: node A settles where
    # pA eps_b (0 - w) + pB eps_n (10 - w) = 0, w = 10 pB eps_n / (pA eps_b + pB eps_n) = 0.291
    # for equal shares. The mixture's means ('cells') are the clusters' means; 'nodes' gives
    # the biased positions.
    rng = np.random.default_rng(0)
    n = 20000
    xs = (np.where(rng.random(n) < 0.5, 0.0, 10.0)[:, None] + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)
    bias = 10 * 0.5 * 0.006 / (0.5 * 0.2 + 0.5 * 0.006)
    for means in ("cells", "nodes"):
        state, _ = _run_gng(xs, capacity=2, cfg=gng.GNGConfig(means=means))
        nodes = np.sort(np.asarray(state.nodes)[:, 0])
        # Fritzke's update either way. One snapshot of a noisy position (every input of the
        # other cluster jumps it by eps_n * 10 = 0.06): biased towards the other cluster by
        # about `bias`, not within 0.1 of its cluster.
        assert 0.1 < nodes[0] < 2.5 * bias and 10 - 2.5 * bias < nodes[1] < 9.9, (nodes, bias)
        got = np.sort(np.asarray(gng.mixture(state).means)[:, 0])
        ref = [xs[xs[:, 0] < 5].mean(), xs[xs[:, 0] > 5].mean()]
        if means == "cells":
            np.testing.assert_allclose(got, ref, atol=0.02)
        else:
            np.testing.assert_allclose(got, nodes, atol=1e-6)


def test_online_em_recovers_a_known_mixture_like_sklearn():
    rng = np.random.default_rng(0)
    x, means, weights = _three_component_data(rng, 30000)
    state = em.EMState.create(jax.random.key(0), 3, 2)
    upd = jax.jit(lambda s, z, k: em.update(s, z, k, momentum=0.9))
    key = jax.random.key(1)
    # 450 steps: here k-means++ leaves one component nearly empty; re-seeded with the weight
    # it earns (not 1 / K) it takes until about step 400 to settle (300 sufficed with 1 / K).
    for step in range(450):
        idx = rng.integers(0, len(x), 512)
        state, _ = upd(state, jnp.asarray(x[idx]), jax.random.fold_in(key, step))
    got = np.asarray(state.means)
    sk = SkGMM(3, random_state=0).fit(x)
    for ref in (means, sk.means_):
        cost = ((got[:, None] - ref[None]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        assert np.all(np.sqrt(cost[rows, cols]) < 0.1), (got, ref)
    rows, cols = linear_sum_assignment(((got[:, None] - means[None]) ** 2).sum(-1))
    np.testing.assert_allclose(np.asarray(state.weights)[rows], weights[cols], atol=0.03)


def test_online_em_reseeds_dead_components_and_kmeanspp_spreads():
    z = jnp.concatenate([jnp.zeros((50, 2)), jnp.ones((50, 2)) * 10.0])
    idx = np.asarray(em.kmeans_plus_plus(jax.random.key(0), z, 2))
    assert {int(i) // 50 for i in idx} == {0, 1}, "k-means++ must pick one seed per separated cluster"
    # With reseed_at='sample', a component starved of data is re-seeded at a sample. With reseed_weight='uniform' it
    # gets 1/K back; by default it enters with the weight it earns: near a fixed point of
    # the weights' M-step on the batch (scipy densities of the updated components).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 2)).astype(np.float32)
    state = em.EMState.create(jax.random.key(0), 2, 2)
    state = state.replace(
        weights=jnp.array([0.999, 0.001]),
        means=jnp.array([[0.0, 0.0], [1e3, 1e3]]),
        initialized=jnp.ones((), bool),
    )
    old, _ = em.update(
        state, jnp.asarray(x), jax.random.key(1), momentum=0.9, reseed_at="sample", reseed_weight="uniform"
    )
    assert float(old.weights[1]) > 0.3
    new, met = em.update(state, jnp.asarray(x), jax.random.key(1), momentum=0.9, reseed_at="sample")
    assert float(met["em_reseeded"]) == 1.0
    assert np.linalg.norm(np.asarray(new.means[1])) < 10.0
    w = np.asarray(new.weights, np.float64)
    covs = np.asarray(new.scale_tril, np.float64) @ np.swapaxes(np.asarray(new.scale_tril, np.float64), 1, 2)
    dens = np.stack([scipy.stats.multivariate_normal(np.asarray(new.means[k]), covs[k]).pdf(x) for k in range(2)], 1)
    share = (w * dens / (w * dens).sum(1, keepdims=True)).mean(0)
    assert 0.0 < w[1] < float(old.weights[1])
    assert abs(w[1] - share[1]) < 0.02, (w, share)


def _min_eig_over_pooled(gm, weights, means, covs):
    """Smallest eigenvalue of each component covariance of gm, and the mixture's pooled
    average variance, both in float64 numpy."""
    weights, means, covs = (np.asarray(x, np.float64) for x in (weights, means, covs))
    m = weights @ means
    total = np.einsum("k,kde->de", weights, covs + np.einsum("kd,ke->kde", means - m, means - m))
    scale_tril = np.asarray(gm.scale_tril, np.float64)
    return np.linalg.eigvalsh(scale_tril @ np.swapaxes(scale_tril, 1, 2)).min(axis=1), np.trace(total) / means.shape[1]


def test_pooled_ridge_floors_every_component_relative_to_the_spread():
    # Two tight clusters far apart: without the pooled ridge the components are ~1e-4 wide.
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(size=(256, 3)) * 0.01 - 5, rng.normal(size=(256, 3)) * 0.01 + 5]).astype(np.float32)
    for rel in (0.0, 0.3):
        state = em.EMState.create(jax.random.key(1), 2, 3)
        state, _ = em.update(state, jnp.asarray(z), jax.random.key(2), eps_rel=0.0, eps_abs=0.0, pooled_eps_rel=rel)
        low, pooled = _min_eig_over_pooled(state.mixture(), state.weights, state.means, state.covs)
        if rel:
            np.testing.assert_array_less(rel * pooled * (1 - 1e-4), low)
        else:
            assert low.max() < 1e-3 * pooled
        # Scale-equivariant: 10x the embeddings gives 10x the factors.
        big, _ = em.update(
            em.EMState.create(jax.random.key(1), 2, 3),
            jnp.asarray(10 * z),
            jax.random.key(2),
            eps_rel=0.0,
            eps_abs=0.0,
            pooled_eps_rel=rel,
        )
        np.testing.assert_allclose(np.asarray(big.scale_tril), 10 * np.asarray(state.scale_tril), rtol=1e-3, atol=1e-6)
    # GNG's mixture view, over its active nodes only.
    g, _ = gng.update(gng.GNGState.create(6, 3), jnp.asarray(z), gng.GNGConfig(insert_every=50))
    act = np.asarray(g.active)
    share = np.where(act, np.asarray(g.wins), 0.0)
    gm = gng.mixture(g, floor=0.0, pooled_eps_rel=0.3)
    low, pooled = _min_eig_over_pooled(
        gm, share / share.sum(), np.asarray(g.means), np.where(act[:, None, None], np.asarray(g.covs), 0.0)
    )
    np.testing.assert_array_less(0.3 * pooled * (1 - 1e-4), low[act])
    assert np.isneginf(np.asarray(gm.log_weights)[~act]).all()
    with pytest.raises(ValueError, match="pooled_eps_rel"):
        gng.mixture(g, pooled_eps_rel=-1.0)
    with pytest.raises(ValueError, match="pooled_eps_rel"):
        em.update(state, jnp.asarray(z), jax.random.key(0), pooled_eps_rel=-0.1)


def test_covariance_shaped_pooled_ridge_keeps_the_views_correlation():
    # Joint embeddings [c ; t] of aligned views: t = c + small noise, two clusters.
    rng = np.random.default_rng(0)
    c = np.concatenate([rng.normal(size=(256, 2)) - 3, rng.normal(size=(256, 2)) + 3])
    z = jnp.asarray(np.concatenate([c, c + 0.05 * rng.normal(size=c.shape)], axis=1), jnp.float32)
    rel = 4.0
    fits = {}
    for shape in ("isotropic", "covariance"):
        state = em.EMState.create(jax.random.key(1), 2, 4)
        state, _ = em.update(
            state, z, jax.random.key(2), eps_rel=0.0, eps_abs=0.0, pooled_eps_rel=rel, pooled_shape=shape
        )
        fits[shape] = state
        w, mu, covs = (np.asarray(x, np.float64) for x in (state.weights, state.means, state.covs))
        m = w @ mu
        total = np.einsum("k,kde->de", w, covs + np.einsum("kd,ke->kde", mu - m, mu - m))
        ridge = rel * (total if shape == "covariance" else np.trace(total) / 4 * np.eye(4))
        scale_tril = np.asarray(state.scale_tril, np.float64)
        np.testing.assert_allclose(scale_tril @ np.swapaxes(scale_tril, 1, 2), covs + ridge, rtol=1e-4, atol=1e-4)
    # The variance each fitted component gives to the disagreement c - t (direction u):
    # the covariance-shaped ridge keeps it near the data's (2 x 0.05^2), the isotropic one
    # widens it to the ridge's size, and then a misaligned pair costs little more.
    u = np.array([1.0, 0.0, -1.0, 0.0]) / np.sqrt(2)
    along = {
        s: np.einsum("d,kde,e->k", u, np.asarray(f.scale_tril) @ np.swapaxes(np.asarray(f.scale_tril), 1, 2), u)
        for s, f in fits.items()
    }
    assert along["covariance"].max() < 0.05 and along["isotropic"].min() > 10.0, along
    # GNG's mixture view takes the same shapes.
    g, _ = gng.update(gng.GNGState.create(6, 4), z, gng.GNGConfig(insert_every=50))
    gm = gng.mixture(g, floor=0.0, pooled_eps_rel=rel, pooled_shape="covariance")
    act = np.asarray(g.active)
    share = np.where(act, np.asarray(g.wins), 0.0)
    share = share / share.sum()
    covs = np.where(act[:, None, None], np.asarray(g.covs, np.float64), 0.0)
    nodes = np.asarray(g.means, np.float64)  # the mixture's component means
    m = share @ nodes
    total = np.einsum("k,kde->de", share, covs + np.einsum("kd,ke->kde", nodes - m, nodes - m))
    scale_tril = np.asarray(gm.scale_tril, np.float64)[act]
    np.testing.assert_allclose(
        scale_tril @ np.swapaxes(scale_tril, 1, 2), covs[act] + rel * total, rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="pooled ridge shape"):
        gng.mixture(g, pooled_eps_rel=rel, pooled_shape="full")
    with pytest.raises(ValueError, match="pooled ridge shape"):
        em.update(state, z, jax.random.key(0), pooled_eps_rel=rel, pooled_shape="full")


def test_conditional_mixture_diagonal_equals_full():
    rng = np.random.default_rng(0)
    n, k, d = 5, 3, 4
    lw = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(n, k))))
    means = jnp.asarray(rng.normal(size=(n, k, d)), jnp.float32)
    scales = jnp.asarray(rng.uniform(0.2, 2.0, size=(n, k, d)), jnp.float32)
    diag = DiagonalConditionalMixture(lw, means, scales)
    full = ConditionalMixture(lw, means, jax.vmap(jax.vmap(jnp.diag))(scales))
    t = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    np.testing.assert_allclose(diag.log_prob(t), full.log_prob(t), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(diag.covariance(), full.covariance(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(diag.sample(jax.random.key(0), 7), full.sample(jax.random.key(0), 7), atol=1e-5)
    with pytest.raises(ValueError, match="scale_diag must have shape"):
        DiagonalConditionalMixture(lw, means, scales[:, :, :2]).log_prob(t)


def test_add_variance_widens_every_layout_like_scipy():
    rng = np.random.default_rng(1)
    n, k, d = 4, 3, 3
    lw = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(n, k)), jnp.float32))
    means = rng.normal(size=(n, k, d)).astype(np.float32)
    scales = rng.uniform(0.2, 2.0, size=(n, k, d)).astype(np.float32)
    shared = np.stack([np.linalg.cholesky(random_spd(rng, d)) for _ in range(k)]).astype(np.float32)
    per_query = np.stack([np.stack([np.linalg.cholesky(random_spd(rng, d)) for _ in range(k)]) for _ in range(n)])
    t = rng.normal(size=(n, d)).astype(np.float32)
    var = rng.uniform(0.5, 2.0, size=n).astype(np.float32)
    layouts = {
        "diag": (
            DiagonalConditionalMixture(lw, jnp.asarray(means), jnp.asarray(scales)),
            np.einsum("nkd,de->nkde", scales**2, np.eye(d)),
        ),
        "shared": (
            ConditionalMixture(lw, jnp.asarray(means), jnp.asarray(shared)),
            np.broadcast_to(shared @ shared.transpose(0, 2, 1), (n, k, d, d)),
        ),
        "per_query": (
            ConditionalMixture(lw, jnp.asarray(means), jnp.asarray(per_query, jnp.float32)),
            per_query @ per_query.transpose(0, 1, 3, 2),
        ),
    }
    for name, (cond, covs) in layouts.items():
        for v_ in (1.5, var):  # one variance for all queries, or one per query
            wide = cond.add_variance(jnp.asarray(v_))
            vq = np.broadcast_to(np.asarray(v_, np.float64), (n,))
            ref = [
                scipy.special.logsumexp(
                    [
                        np.asarray(lw)[i, j]
                        + scipy.stats.multivariate_normal(means[i, j], covs[i, j] + vq[i] * np.eye(d)).logpdf(t[i])
                        for j in range(k)
                    ]
                )
                for i in range(n)
            ]
            np.testing.assert_allclose(wide.log_prob(jnp.asarray(t)), ref, rtol=1e-5, atol=1e-5, err_msg=name)
            # Law of total variance: the mixture's covariance grows by exactly variance * I.
            np.testing.assert_allclose(
                wide.covariance(), cond.covariance() + vq[:, None, None] * np.eye(d), rtol=1e-4, atol=1e-5
            )
    with pytest.raises(ValueError, match="scalar or"):
        layouts["diag"][0].add_variance(jnp.ones((n + 1,)))


def test_mdn_pooled_ridge_tracks_the_target_variance():
    m = methods.default_settings("gmje_mdn", num_components=3, mdn_hidden=(8,), pooled_eps_rel=0.5, momentum=0.9)
    method = methods.build(m)
    params, state = method.init(jax.random.key(0), 2, 2)
    a, b = jax.random.normal(jax.random.key(1), (2, 64, 2))
    emb = methods.Embeddings(a, 3 * b)
    loss, _ = method.loss(params, state, emb)
    assert np.isfinite(float(loss))
    state, _ = method.update(state, emb, None, jax.random.key(2))
    np.testing.assert_allclose(float(state["target_var"]), np.var(3 * np.asarray(b), axis=0).mean(), rtol=1e-5)
    state2, _ = method.update(state, methods.Embeddings(a, b), None, jax.random.key(3))
    expect = 0.9 * np.var(3 * np.asarray(b), axis=0).mean() + 0.1 * np.var(np.asarray(b), axis=0).mean()
    np.testing.assert_allclose(float(state2["target_var"]), expect, rtol=1e-5)
    # Inference sees the same floor: every predicted variance >= 0.5 * the tracked variance.
    scales = method.conditional(params, state2, a).scale_diag
    assert float(jnp.min(scales**2)) >= 0.5 * expect * (1 - 1e-5)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_mdn_recovers_two_branches(covariance):
    """t = +-c + noise: held-out NLL within 5% of the true conditional's."""
    rng = np.random.default_rng(0)
    sigma = 0.5

    def sample(n):
        c = rng.uniform(-3, 3, size=(n, 1))
        t = rng.choice([-1.0, 1.0], size=(n, 1)) * c + sigma * rng.normal(size=(n, 1))
        return c.astype(np.float32), t.astype(np.float32)

    def true_nll(c, t):
        lp = lambda m: -0.5 * ((t - m) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
        return -np.mean(np.logaddexp(lp(c), lp(-c)) + np.log(0.5))

    head = MDNHead(num_components=3, out_dim=1, hidden=(32, 32), covariance=covariance, floor=1e-3)
    c, t = sample(8000)
    params = head.init(jax.random.key(0), c[:2])
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, c, t):
        loss, g = jax.value_and_grad(lambda p: -jnp.mean(head.apply(p, c).log_prob(t)))(params)
        upd, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(params, upd), opt_state, loss

    for _ in range(1500):
        idx = rng.integers(0, len(c), 256)
        params, opt_state, _ = step(params, opt_state, c[idx], t[idx])
    ct, tt = sample(4000)
    nll = -float(jnp.mean(head.apply(params, ct).log_prob(tt)))
    ref = true_nll(ct.astype(np.float64), tt.astype(np.float64))
    assert abs(nll - ref) < 0.05 * abs(ref), (nll, ref)
