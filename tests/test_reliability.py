"""Failures tried on purpose: bad input to the public functions, numerical extremes,
property-based checks of the core kernels against numpy/scipy, and the debug mode.

(Interruptions, corrupt checkpoints and config errors are in test_train.py and
test_vision.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gje_jax as G
from gje_jax import losses as L
from gje_jax import sampling_metrics
from gje_jax.remedies import resampling
from tests.helpers import random_spd
from tests.test_bad_inputs import FUNCTIONS, _gm, _with, _z

PROPERTY = settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _mixture(d=4, k=2, seed=0):
    rng = np.random.default_rng(seed)
    return G.GaussianMixture.from_covariances(
        jnp.zeros(k), jnp.asarray(rng.normal(size=(k, d)), jnp.float32), jnp.stack([jnp.eye(d)] * k)
    )


# ---- bad input: the sweep over every function and fault is tests/test_bad_inputs.py --------

# The functions whose zero-row and wrong-width behaviour is checked here.
ZERO_ROW_FUNCTIONS = [
    "GaussianMixture.log_prob",
    "GaussianMixture.responsibilities",
    "component_log_probs",
    "fit_gaussian",
    "empirical_moments",
    "ledoit_wolf",
    "trace_trap_report",
    "gje_loss",
    "gmje_loss",
    "geometry_term",
    "infonce",
    "gmje_contrastive",
    "vicreg_loss",
    "predictor_loss",
    "smc.kernel_log_prob",
]


@pytest.mark.parametrize("fn", ZERO_ROW_FUNCTIONS)
def test_zero_rows_or_wrong_width_raise(fn):
    if fn in (
        "GaussianMixture.log_prob",
        "GaussianMixture.responsibilities",
        "component_log_probs",
        "smc.kernel_log_prob",
    ):
        # Scoring zero points is well defined: an empty result.
        assert np.asarray(FUNCTIONS[fn](_z(0))).shape[0] == 0
    else:
        with pytest.raises(ValueError, match="at least 1 row"):
            FUNCTIONS[fn](_z(0))
    if fn in ("GaussianMixture.log_prob", "GaussianMixture.responsibilities", "gmje_loss", "smc.kernel_log_prob"):
        with pytest.raises(ValueError, match="D = 4|dimension 5"):
            FUNCTIONS[fn](_z(8, 5))


def test_bad_parameters_and_arguments():
    with pytest.raises(ValueError, match="K >= 1"):
        G.GaussianMixture(jnp.zeros(0), jnp.zeros((0, 4)), jnp.zeros((0, 4, 4))).log_prob(_z())
    bad = _gm().replace(means=_gm().means.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="means contains 1 NaN"):
        bad.validate()
    with pytest.raises(ValueError, match="means contains 1 NaN"):
        G.component_log_probs(_z(), bad.means, bad.scale_tril)
    with pytest.raises(ValueError, match="means contains 1 NaN"):
        bad.log_prob(_z())
    with pytest.raises(ValueError, match="means contains 1 NaN"):
        L.gmje_loss(_z()[:, :2], _z()[:, 2:], bad)
    with pytest.raises(ValueError, match="split"):
        _gm().condition(_z()[:, :2], split=4)
    with pytest.raises(ValueError, match="split"):
        G.gaussian_mutual_information(G.fit_gaussian(_z()), split=0)
    key = jax.random.key(0)
    for scheme in ("multinomial", "stratified", "systematic", "residual"):
        fn = resampling.get_scheme(scheme)
        with pytest.raises(ValueError, match="NaN or \\+Inf"):
            fn(key, jnp.array([0.0, jnp.nan, 1.0]), 4)
        with pytest.raises(ValueError, match="-inf everywhere"):
            fn(key, jnp.full((3,), -jnp.inf), 4)
        # Zero weights (-inf) are legal and never drawn.
        idx = np.asarray(fn(key, jnp.array([0.0, -jnp.inf, 0.0]), 64))
        assert idx.shape == (64,) and not np.any(idx == 1)
    with pytest.raises(ValueError, match="N >= 2"):
        sampling_metrics.frechet_distance(_z(1), _z(5))
    with pytest.raises(ValueError, match="NaN or Inf"):
        sampling_metrics.mmd_rbf(_with(np.nan), _z())


def test_nan_propagates_under_jit_but_eager_calls_refuse_it():
    """Under jit the values are not known at trace time: NaN in gives NaN out (the debug
    mode's checkify checks catch it in training); the same eager call raises."""
    z = _with(np.nan)
    out = jax.jit(lambda z: L.gje_loss(z[:, :2], z[:, 2:])[0])(z)
    assert np.isnan(out)
    with pytest.raises(ValueError, match="t contains 1 NaN"):
        L.gje_loss(z[:, :2], z[:, 2:])


# ---- numerical extremes -----------------------------------------------------------------


def test_condition_number_1e7_in_float32():
    rng = np.random.default_rng(3)
    d = 8
    cov = random_spd(rng, d, cond=1e7)
    gm = G.GaussianMixture.from_covariances(jnp.zeros(1), jnp.zeros((1, d)), jnp.asarray(cov, jnp.float32)[None])
    x = rng.multivariate_normal(np.zeros(d), cov, size=256)
    ref = scipy.stats.multivariate_normal(np.zeros(d), cov).logpdf(x)
    ours = np.asarray(gm.log_prob(x.astype(np.float32)))
    assert np.all(np.isfinite(ours))
    # float32 Mahalanobis at condition 1e7 carries an error of order cond * eps_32 ~ 1
    # per point; the average over points sampled from the density stays close.
    assert abs(ours.mean() - ref.mean()) < 0.05 * abs(ref.mean()) + 1.0
    # Conditioning through the ill-conditioned factor stays finite and PSD.
    cond = gm.condition(x[:4, :3].astype(np.float32), split=3)
    ev = np.linalg.eigvalsh(np.asarray(cond.covariance(), np.float64))
    assert np.all(np.isfinite(ev)) and ev.min() > -1e-3 * ev.max()
    # The losses on data from it, with gradients.
    z = jnp.asarray(x, jnp.float32)
    for f in (
        lambda z: L.gje_loss(z[:, :4], z[:, 4:], lambda_geo=1.0)[0],
        lambda z: L.gmje_loss(z[:, :4], z[:, 4:], gm)[0],
    ):
        val, grad = jax.jit(jax.value_and_grad(f))(z)
        assert np.isfinite(val) and np.all(np.isfinite(grad))


def test_variances_at_the_floor_stay_finite():
    d, floor = 4, 1e-4
    raw = jnp.broadcast_to(jnp.eye(d) * -1e4, (2, d, d))  # diagonal far below the floor
    gm = G.GaussianMixture.from_unconstrained(jnp.zeros(2), jnp.zeros((2, d)), raw, floor=floor)
    np.testing.assert_allclose(np.diagonal(np.asarray(gm.scale_tril), axis1=1, axis2=2), floor, rtol=1e-3)
    z = jnp.asarray(_z(16, d) * 1e-3)

    def f(raw):
        m = G.GaussianMixture.from_unconstrained(jnp.zeros(2), jnp.zeros((2, d)), raw, floor=floor)
        return L.gmje_loss(z[:, :2], z[:, 2:], m, lambda_bal=0.1)[0]

    val, grad = jax.jit(jax.value_and_grad(f))(raw)
    assert np.isfinite(val) and np.all(np.isfinite(grad))


LOSSES = {
    "gje batch": lambda c, t: L.gje_loss(c, t, lambda_geo=1.0),
    "gje batch naive": lambda c, t: L.gje_loss(c, t, lambda_geo=0.0),
    "gmje prototypes": lambda c, t: L.gmje_loss(c, t, _mixture(c.shape[1] + t.shape[1], 3), lambda_bal=0.1),
    "infonce": lambda c, t: L.infonce(c, t, symmetric=True),
    "gmje_contrastive": lambda c, t: L.gmje_contrastive(c, t, tau=0.1),
    "vicreg": lambda c, t: L.vicreg_loss(c, t),
    "predictor": lambda c, t: L.predictor_loss(c, t),
}


def _extreme_batches(rng, n, d):
    base = rng.normal(size=(n, d))
    return {
        "collapsed (identical rows)": np.ones((n, d)) * 0.3,
        "all zeros": np.zeros((n, d)),
        "rank one": rng.normal(size=(n, 1)) @ rng.normal(size=(1, d)),
        "norm 1e6": base * 1e6,
        "norm 1e-6": base * 1e-6,
    }


@pytest.mark.parametrize("n,d", [(4, 32), (64, 8)])  # a batch smaller than D, and a usual one
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_extreme_batches_keep_losses_and_gradients_finite(loss, n, d):
    rng = np.random.default_rng(5)
    h = d // 2
    # Jitted once per (loss, shape): the five batches share one compiled program.
    value_and_grad = jax.jit(jax.value_and_grad(lambda z: LOSSES[loss](z[:, :h], z[:, h:])[0]))
    for case, z in _extreme_batches(rng, n, d).items():
        if loss == "gmje prototypes" and case == "norm 1e6":
            continue  # unit-scale prototypes 1e6 away: test_prototypes_far_from_the_data_...
        val, grad = value_and_grad(jnp.asarray(z, jnp.float32))
        assert np.isfinite(val) and np.all(np.isfinite(grad)), (loss, case, float(val))


def test_prototypes_far_from_the_data_give_large_finite_values():
    gm = _mixture(8, 3)
    z = jnp.asarray(_z(16, 8) * 1e6)
    val, grad = jax.value_and_grad(lambda z: L.gmje_loss(z[:, :4], z[:, 4:], gm)[0])(z)
    assert np.isfinite(val) and val > 1e10 and np.all(np.isfinite(grad))


def test_scale_invariance_holds_at_extreme_norms():
    """lambda_geo = 1 makes gje_loss scale-free: the same value at norm 1e-6 and 1e6."""
    rng = np.random.default_rng(8)
    z = rng.normal(size=(128, 6)) @ rng.normal(size=(6, 6))
    vals = [
        float(
            L.gje_loss(
                jnp.asarray(s * z[:, :3], jnp.float32),
                jnp.asarray(s * z[:, 3:], jnp.float32),
                lambda_geo=1.0,
                eps_abs=0.0,
            )[0]
        )
        for s in (1e-6, 1.0, 1e6)
    ]
    np.testing.assert_allclose(vals, vals[1], atol=2e-3)


def test_trap_report_says_what_happened_to_a_collapsed_batch():
    rng = np.random.default_rng(2)
    healthy = L.trace_trap_report(jnp.asarray(rng.normal(size=(256, 8)), jnp.float32))
    collapsed = L.trace_trap_report(jnp.asarray(1.0 + 1e-7 * rng.normal(size=(256, 8)), jnp.float32))
    assert float(healthy["effective_rank"]) > 7.0
    assert float(collapsed["std_mean"]) < 1e-6 < float(healthy["std_mean"])
    for r in (healthy, collapsed):
        assert all(np.isfinite(float(v)) for v in r.values())


# ---- property-based checks against independent references ------------------------------


@PROPERTY
@given(
    shape=st.sampled_from([(1, 1, 3), (3, 2, 5), (2, 4, 1)]),  # (K, D, N): few shapes, few compiles
    spread=st.floats(0.1, 30.0),
    seed=st.integers(0, 2**16),
)
def test_property_mixture_log_prob_and_responsibilities_match_scipy(shape, spread, seed):
    k, d, n = shape
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=k)
    means = rng.normal(size=(k, d)) * spread
    covs = np.stack([random_spd(rng, d, scale=rng.uniform(0.01, 10.0)) for _ in range(k)])
    z = rng.normal(size=(n, d)) * spread
    gm = G.GaussianMixture.from_covariances(
        jnp.asarray(logits, jnp.float32), jnp.asarray(means, jnp.float32), jnp.asarray(covs, jnp.float32)
    )
    comp = np.stack([scipy.stats.multivariate_normal(means[j], covs[j]).logpdf(z).reshape(n) for j in range(k)], 1)
    joint = scipy.special.log_softmax(logits) + comp
    ref = scipy.special.logsumexp(joint, axis=1)
    ours = np.asarray(gm.log_prob(jnp.asarray(z, jnp.float32)))
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-3)
    resp = np.asarray(gm.responsibilities(jnp.asarray(z, jnp.float32)))
    np.testing.assert_allclose(resp.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(resp, scipy.special.softmax(joint, axis=1), atol=2e-3)


@PROPERTY
@given(split=st.sampled_from([(1, 1), (1, 3), (3, 2)]), seed=st.integers(0, 2**16))
def test_property_gaussian_conditioning_is_the_schur_complement(split, seed):
    d_c, d_t = split
    rng = np.random.default_rng(seed)
    d = d_c + d_t
    cov = random_spd(rng, d, cond=rng.uniform(1.0, 1e3))
    mu = rng.normal(size=d)
    c = rng.normal(size=(3, d_c))
    gm = G.GaussianMixture.from_covariances(
        jnp.zeros(1), jnp.asarray(mu, jnp.float32)[None], jnp.asarray(cov, jnp.float32)[None]
    )
    cond = gm.condition(jnp.asarray(c, jnp.float32), split=d_c)
    a, b, cc = cov[:d_c, :d_c], cov[:d_c, d_c:], cov[d_c:, d_c:]
    ref_cov = cc - b.T @ np.linalg.inv(a) @ b
    ref_mean = mu[d_c:] + (c - mu[:d_c]) @ np.linalg.inv(a) @ b
    np.testing.assert_allclose(np.asarray(cond.mean()), ref_mean, rtol=1e-3, atol=1e-3 * (1 + np.abs(ref_mean).max()))
    np.testing.assert_allclose(np.asarray(cond.covariance())[0], ref_cov, rtol=1e-3, atol=1e-3 * np.abs(cc).max())


@PROPERTY
@given(
    shape=st.sampled_from([(1, 4), (3, 6), (16, 4)]),  # (N, D), N < D included
    scale=st.floats(1e-4, 1e4),
    duplicate=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_gje_and_gmje_losses_are_finite_with_finite_gradients(shape, scale, duplicate, seed):
    n, d = shape
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)) * scale
    if duplicate:
        z[:] = z[0]
    vals, grads = _property_losses(jnp.asarray(z, jnp.float32), _mixture(d, 2, seed % 3))
    assert np.all(np.isfinite(vals)) and all(np.all(np.isfinite(g)) for g in grads)


@jax.jit
def _property_losses(z, gm):
    """(values [3], gradients) of gje / gmje / contrastive losses; one compile per shape."""
    h = z.shape[1] // 2
    fs = (
        lambda z: L.gje_loss(z[:, :h], z[:, h:], lambda_geo=1.0)[0],
        lambda z: L.gmje_loss(z[:, :h], z[:, h:], gm, lambda_geo=1.0, lambda_bal=0.1)[0],
        lambda z: L.gmje_contrastive(z[:, :h], z[:, h:], tau=0.1)[0],
    )
    out = [jax.value_and_grad(f)(z) for f in fs]
    return jnp.stack([v for v, _ in out]), [g for _, g in out]


@PROPERTY
@given(
    weights=st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1.0)), min_size=1, max_size=8).filter(
        lambda w: sum(w) > 0
    ),
    num=st.integers(1, 16),
    scheme=st.sampled_from(["multinomial", "stratified", "systematic", "residual"]),
    seed=st.integers(0, 2**16),
)
def test_property_resampling_draws_only_positive_weights(weights, num, scheme, seed):
    w = np.asarray(weights)
    with np.errstate(divide="ignore"):
        lw = jnp.asarray(np.log(w), jnp.float32)
    idx = np.asarray(resampling.get_scheme(scheme)(jax.random.key(seed), lw, num))
    assert idx.shape == (num,) and idx.dtype == np.int32
    assert np.all((idx >= 0) & (idx < len(w))) and np.all(w[idx] > 0)
    if scheme == "systematic":  # each count within one of num * w
        counts = np.bincount(idx, minlength=len(w))
        assert np.all(np.abs(counts - num * w / w.sum()) < 1 + 1e-4)


# ---- debug mode ---------------------------------------------------------------------------


def _debug_config(method="gmje"):
    from gje_jax.train.configs import base_config

    c = base_config(method)
    c.batch_size, c.data.num_examples, c.num_steps = 32, 256, 2
    c.debug = True
    return c


def test_debug_mode_names_the_step_method_and_tensor(one_device):
    from gje_jax.train import loop

    c = _debug_config()
    state, step_fn, source, sh = loop.setup(c)
    key = jax.random.key(0)
    batch = loop.global_batch(source, c, 0, sh)
    # A clean step passes and gives the same loss as the unchecked step.
    plain = c.copy_and_resolve_references()
    plain.debug = False
    s2, f2, _, _ = loop.setup(plain)
    _, m_plain = loop.run_step(plain, f2, s2, batch, key)
    state, m = loop.run_step(c, step_fn, state, batch, key)
    np.testing.assert_allclose(float(m["loss"]), float(m_plain["loss"]), rtol=1e-6)
    # A poisoned prototype mean: named by its path, with the method and the step.
    # (The step donates its state argument, so each call gets its own copy.)
    fresh = lambda: jax.tree.map(jnp.copy, state)  # noqa: E731
    means = state.params["method"]["means"]
    poisoned = fresh().replace(
        params=dict(state.params, method=dict(state.params["method"], means=means.at[1, 0].set(jnp.nan)))
    )
    with pytest.raises(
        FloatingPointError, match=r"'gmje'.*params \(on entry\)\['method'\]\['means'\].*1 bad at step 1"
    ):
        loop.run_step(c, step_fn, poisoned, batch, key)
    # A NaN in the data: caught at the views, before it reaches the encoder.
    bad = dict(batch, x=batch["x"].at[0, 0].set(jnp.nan))
    with pytest.raises(FloatingPointError, match=r"views\['a'\]"):
        loop.run_step(c, step_fn, fresh(), bad, key)


def test_debug_flag_is_type_checked():
    from gje_jax.train import config_check

    c = _debug_config()
    with c.unlocked():
        c.debug = None
    with pytest.raises(ValueError, match="config.debug must be True or False"):
        config_check.validate(c)


def test_stability_report_records_a_diverging_run_instead_of_aborting(tmp_path, one_device):
    from experiments import stability
    from experiments.configs import stability as stability_config

    c = stability_config.get_config("runlocal")
    with c.unlocked():
        c.methods = ("gje",)
        c.train.optim.lr = 1e30  # diverges within the first logging interval
    (row,) = stability.run(c, str(tmp_path), command="test")
    assert row["error"].startswith("The update at step ") and row["non_finite"] >= 1
    bad = int(row["error"].split("step ")[1].split()[0])
    assert 1 <= bad <= 10 and row["steps"] == bad  # the table says where it diverged
    text = (tmp_path / "stability.md").read_text()
    assert f"| gje | {bad} |" in text and (tmp_path / "stability.png").exists()


def test_an_eager_loss_checks_each_user_argument_once(monkeypatch):
    """The NaN check sits at the public boundary: internal calls (component_log_probs,
    geometry_term) reuse the checked inputs instead of syncing with the device again."""
    from gje_jax import _validation

    seen = []
    real = _validation.check_finite_if_concrete

    def spy(x, name):
        if _validation.is_concrete(x):  # on tracers (inside jit) the check is free: no device sync
            seen.append(name)
        return real(x, name)

    gm = _gm()  # built (and its construction checked) before the spy counts
    monkeypatch.setattr(_validation, "check_finite_if_concrete", spy)
    z = _z()
    L.gmje_loss(z[:, :2], z[:, 2:], gm, lambda_geo=1.0)
    assert sorted(seen) == ["c", "means", "scale_tril", "t"]


def test_insertion_spikes_against_a_brute_force_loop():
    # Random losses with planted jumps, some at node insertions: the vectorised statistic
    # equals a plain loop over the steps, and non-consecutive records give NaN.
    import numpy as np

    from experiments.stability import insertion_spikes

    rng = np.random.default_rng(0)
    t, window, after = 400, 50, 5
    loss = 3.0 + rng.normal(size=t) * 0.1
    inserted = rng.random(t) < 0.03
    loss[np.flatnonzero(inserted)[:3] + 2] += 4.0  # spikes two steps after three insertions
    loss[300] -= 9.0  # a drop (no spike)
    got = insertion_spikes(np.arange(t), loss, inserted.astype(float), window=window, after=after)
    at, other = [], []
    for i in range(window, t - after + 1):
        run = loss[i - window : i].mean()
        ex = (loss[i : i + after].max() - run) / abs(run)
        near = any(j - after < i < j + after for j in np.flatnonzero(inserted))
        (at if inserted[i] else other if not near else []).append(ex)
    assert got["insertions"] == int(inserted.sum())
    np.testing.assert_allclose(got["insert_excess"], max(at), rtol=1e-12)
    np.testing.assert_allclose(got["other_excess"], max(other), rtol=1e-12)
    assert got["insert_excess"] > 1.0 > got["other_excess"]
    gappy = insertion_spikes(np.arange(t) * 10, loss, inserted)
    assert np.isnan(gappy["insert_excess"]) and gappy["insertions"] == got["insertions"]
