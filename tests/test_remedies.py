"""GNG, online EM and the MDN head against independent references (scipy, sklearn,
closed-form densities)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture as SkGMM

from gje_jax import ConditionalMixture, em, gng
from gje_jax.models import MDNHead


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


def test_online_em_recovers_a_known_mixture_like_sklearn():
    rng = np.random.default_rng(0)
    x, means, weights = _three_component_data(rng, 30000)
    state = em.EMState.create(jax.random.key(0), 3, 2)
    upd = jax.jit(lambda s, z, k: em.update(s, z, k, momentum=0.9))
    key = jax.random.key(1)
    for step in range(300):
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
    # A component starved of data is re-seeded at a sample and gets weight 1/K back.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 2)).astype(np.float32)
    state = em.EMState.create(jax.random.key(0), 2, 2)
    state = state.replace(
        weights=jnp.array([0.999, 0.001]),
        means=jnp.array([[0.0, 0.0], [1e3, 1e3]]),
        initialized=jnp.ones((), bool),
    )
    new, met = em.update(state, jnp.asarray(x), jax.random.key(1), momentum=0.9)
    assert float(met["em_reseeded"]) == 1.0
    assert np.linalg.norm(np.asarray(new.means[1])) < 10.0
    assert float(new.weights[1]) > 0.3


def test_conditional_mixture_diagonal_equals_full():
    rng = np.random.default_rng(0)
    n, k, d = 5, 3, 4
    lw = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(n, k))))
    means = jnp.asarray(rng.normal(size=(n, k, d)), jnp.float32)
    scales = jnp.asarray(rng.uniform(0.2, 2.0, size=(n, k, d)), jnp.float32)
    diag = ConditionalMixture(lw, means, scales, diagonal=True)
    full = ConditionalMixture(lw, means, jax.vmap(jax.vmap(jnp.diag))(scales))
    t = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    np.testing.assert_allclose(diag.log_prob(t), full.log_prob(t), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(diag.covariance(), full.covariance(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(diag.sample(jax.random.key(0), 7), full.sample(jax.random.key(0), 7), atol=1e-5)
    with pytest.raises(ValueError, match="diagonal scales must have shape"):
        ConditionalMixture(lw, means, scales[:, :, :2], diagonal=True).log_prob(t)


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
