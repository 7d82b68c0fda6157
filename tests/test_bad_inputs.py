"""The bad-input sweep: every public function against every fault, one row each.

How to extend it: add a function to FUNCTIONS (it takes one [N, 4] float array; a pair is
split as c = z[:, :2], t = z[:, 2:]), and, where it answers a fault differently from the
default in FAULTS, an entry in EXCEPTIONS saying what it does instead. Bad parameters
(mixtures, states) and bad scalar arguments have tables of their own below.

Every row is either a clear error (the exception type and a phrase of its message) or a
documented result (finite output of the documented shape, or a documented marker value).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gje_jax as G
from gje_jax import losses as L
from gje_jax import sampling_metrics
from gje_jax.remedies import em, gng, resampling, smc

D = 4


@functools.cache
def _gm():
    rng = np.random.default_rng(0)
    covs = np.stack([np.eye(D), 2 * np.eye(D) + 0.3]).astype(np.float32)
    return G.GaussianMixture.from_covariances(jnp.zeros(2), jnp.asarray(rng.normal(size=(2, D)), jnp.float32), covs)


def _pair(fn):
    def call(z):
        z = np.asarray(z)
        return fn(z, z) if z.ndim != 2 else fn(z[:, :2], z[:, 2:])

    return call


def _cond(z):
    z = np.asarray(z)
    c = z[:, 2:] if z.ndim == 2 else z  # the faults sit in column 3
    return _gm().condition(c, split=2).mean()


def _cond_log_prob(z):
    z = np.asarray(z)
    t = z[:, 2:] if z.ndim == 2 else z
    n = z.shape[0] if z.ndim == 2 else 8
    return _gm().condition(np.zeros((n, 2), np.float32), split=2).log_prob(t)


def _em_update(z):
    state = em.EMState.create(jax.random.key(0), num_components=2, dim=D)
    return em.update(state, z, jax.random.key(1))[0].means


def _gng_update(z):
    return gng.update(gng.GNGState.create(capacity=6, dim=D), z, gng.GNGConfig(insert_every=4))[0].nodes


def _smc_insert(z):
    return smc.insert(smc.ParticleBank.empty(16, D), z).particles


def _smc_update(z):
    return smc.update(smc.ParticleBank.empty(16, D), z, jax.random.key(0), jnp.eye(D))[0].particles


def _stats_update(z):
    return G.GaussianStats.zeros(D).update(z, momentum=0.5).cov


def _ref(n=6):
    return np.random.default_rng(5).normal(size=(n, D)).astype(np.float32)


FUNCTIONS = {
    "GaussianMixture.log_prob": lambda z: _gm().log_prob(z),
    "GaussianMixture.responsibilities": lambda z: _gm().responsibilities(z),
    "GaussianMixture.condition": _cond,
    "ConditionalMixture.log_prob": _cond_log_prob,
    "component_log_probs": lambda z: G.component_log_probs(z, _gm().means, _gm().scale_tril)[0],
    "fit_gaussian": lambda z: G.fit_gaussian(z).scale_tril,
    "empirical_moments": lambda z: G.empirical_moments(z)[1],
    "ledoit_wolf": lambda z: G.ledoit_wolf(z)[0],
    "trace_trap_report": lambda z: L.trace_trap_report(z)["effective_rank"],
    "gje_loss": _pair(lambda c, t: L.gje_loss(c, t, lambda_geo=1.0)[0]),
    "gmje_loss": _pair(lambda c, t: L.gmje_loss(c, t, _gm())[0]),
    "geometry_term": _pair(lambda c, t: L.geometry_term(c, t)),
    "infonce": _pair(lambda c, t: L.infonce(c, t)[0]),
    "gmje_contrastive": _pair(lambda c, t: L.gmje_contrastive(c, t, tau=0.1)[0]),
    "vicreg_loss": _pair(lambda c, t: L.vicreg_loss(c, t)[0]),
    "predictor_loss": _pair(lambda c, t: L.predictor_loss(c, t)[0]),
    "smc.kernel_log_prob": lambda z: smc.kernel_log_prob(z, np.zeros((3, D), np.float32), None, jnp.eye(D)),
    "smc.insert": _smc_insert,
    "smc.update": _smc_update,
    "em.update": _em_update,
    "gng.update": _gng_update,
    "GaussianStats.update": _stats_update,
    "sampling_metrics.mmd_rbf": lambda z: np.float32(sampling_metrics.mmd_rbf(z, _ref())),
    "sampling_metrics.frechet_distance": lambda z: np.float32(sampling_metrics.frechet_distance(z, _ref(12))),
}


def _z(n=8, d=D, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


def _with(value, row=2, col=3):
    z = _z()
    z[row, col] = value
    return z


FINITE = ("finite",)
NON_FINITE = (ValueError, "NaN or Inf")
BAD_RANK = (ValueError, r"shape \[")
NOT_REAL = (TypeError, "real-valued")

# fault: (input, default expectation)
FAULTS = {
    "integer input": (_z().round().astype(np.int32), FINITE),
    "float64 input": (_z(dtype=np.float64), FINITE),
    "float16 input": (_z(dtype=np.float16), FINITE),
    "one row": (_z(1), FINITE),
    "rank 1": (_z()[0], BAD_RANK),
    "rank 3": (_z()[None], BAD_RANK),
    "NaN": (_with(np.nan), NON_FINITE),
    "Inf": (_with(np.inf), NON_FINITE),
    "-Inf": (_with(-np.inf), NON_FINITE),
    "all NaN": (np.full((8, D), np.nan, np.float32), NON_FINITE),
    "bool input": (_z() > 0, NOT_REAL),
    "complex input": (_z().astype(np.complex64), NOT_REAL),
}

# (function, fault): what it does instead of the default, and why that is right.
EXCEPTIONS = {
    # A single pair is one positive among one candidate: log 1 = 0.
    # Moments of one row: the ridge keeps the fit finite; a one-row batch is legal.
    **{(fn, "one row"): (ValueError, "at least 2") for fn in ("gng.update",)},
    # Frechet distance needs a covariance estimate: N >= 2.
    ("sampling_metrics.frechet_distance", "one row"): (ValueError, "N >= 2"),
    ("sampling_metrics.mmd_rbf", "one row"): (ValueError, "N >= 2"),
    # The sampling metrics are numpy functions: float16 and integers are converted too.
}
for fn in ("sampling_metrics.mmd_rbf", "sampling_metrics.frechet_distance"):
    EXCEPTIONS[(fn, "rank 1")] = EXCEPTIONS[(fn, "rank 3")] = (ValueError, r"\[N, D\]")
    EXCEPTIONS[(fn, "bool input")] = EXCEPTIONS[(fn, "complex input")] = (TypeError, "real")


def _expected(fn, fault):
    return EXCEPTIONS.get((fn, fault), FAULTS[fault][1])


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("fn", sorted(FUNCTIONS))
def test_bad_input(fn, fault):
    z, _ = FAULTS[fault]
    expected = _expected(fn, fault)
    if expected == FINITE:
        out = np.asarray(FUNCTIONS[fn](z))
        assert out.dtype == np.float32 and np.all(np.isfinite(out)), (fn, fault, out)
    else:
        with pytest.raises(expected[0], match=expected[1]):
            FUNCTIONS[fn](z)


# ---- bad parameters of a mixture: refused wherever they are read -------------------------


def _bad_params(kind):
    gm = _gm()
    lw, mu, ch = np.asarray(gm.log_weights), np.asarray(gm.means), np.asarray(gm.scale_tril).copy()
    if kind == "log_weights NaN":
        lw = np.array([0.0, np.nan], np.float32)
    elif kind == "log_weights +inf":
        lw = np.array([0.0, np.inf], np.float32)
    elif kind == "log_weights all -inf":
        lw = np.full(2, -np.inf, np.float32)
    elif kind == "means NaN":
        mu = mu.copy()
        mu[1, 0] = np.nan
    elif kind == "scale_tril zero diagonal":
        ch[1, 2, 2] = 0.0
    elif kind == "scale_tril negative diagonal":
        ch[0, 1, 1] = -1.0
    elif kind == "scale_tril upper triangle":
        ch[1] = ch[1].T  # an upper Cholesky factor, as scipy.linalg.cholesky returns
    elif kind == "scale_tril NaN":
        ch[0, 3, 0] = np.nan
    return G.GaussianMixture(jnp.asarray(lw), jnp.asarray(mu), jnp.asarray(ch))


PARAM_FAULTS = {
    "log_weights NaN": "NaN or \\+Inf",
    "log_weights +inf": "NaN or \\+Inf",
    "log_weights all -inf": "-inf everywhere",
    "means NaN": "NaN or Inf",
    "scale_tril zero diagonal": "positive diagonal",
    "scale_tril negative diagonal": "positive diagonal",
    "scale_tril upper triangle": "lower-triangular",
    "scale_tril NaN": "NaN or Inf",
}
PARAM_USERS = {
    "log_prob": lambda gm: gm.log_prob(_z()),
    "responsibilities": lambda gm: gm.responsibilities(_z()),
    "sample": lambda gm: gm.sample(jax.random.key(0), 5),
    "condition": lambda gm: gm.condition(_z()[:, :2]),
    "covariance": lambda gm: gm.covariance(),
    "gmje_loss": lambda gm: L.gmje_loss(_z()[:, :2], _z()[:, 2:], gm)[0],
    "component_log_probs": lambda gm: G.component_log_probs(_z(), gm.means, gm.scale_tril)[0],
}


PARAM_CASES = [
    (f, u)
    for f in sorted(PARAM_FAULTS)
    for u in sorted(PARAM_USERS)
    if not (u == "component_log_probs" and f.startswith("log_weights"))  # it takes no weights
]


@pytest.mark.parametrize("fault,user", PARAM_CASES)
def test_bad_mixture_parameters(fault, user):
    with pytest.raises(ValueError, match=PARAM_FAULTS[fault]):
        PARAM_USERS[user](_bad_params(fault))


def test_upper_triangle_is_ignored_everywhere_under_jit():
    """The documented convention under jit, where values cannot be checked: only tril(scale_tril)
    is read, by the density and by sampling and moments alike (scipy's reference uses the
    covariance of the lower factor)."""
    import scipy.stats

    gm = _gm()
    noisy = gm.replace(scale_tril=gm.scale_tril + jnp.triu(jnp.ones((D, D)), 1))
    cov = np.asarray(gm.scale_tril[0] @ gm.scale_tril[0].T, np.float64)
    ref = scipy.stats.multivariate_normal(np.asarray(gm.means[0], np.float64), cov).logpdf(_z()[:1])
    single = jax.jit(
        lambda g: g.replace(log_weights=g.log_weights[:1], means=g.means[:1], scale_tril=g.scale_tril[:1])
    )(noisy)
    got = jax.jit(lambda g: g.log_prob(_z()[:1]))(single)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(lambda g: g.covariance())(noisy), gm.covariance(), rtol=1e-5, atol=1e-6)
    key = jax.random.key(3)
    np.testing.assert_allclose(jax.jit(lambda g: g.sample(key, 7))(noisy), gm.sample(key, 7), rtol=1e-5, atol=1e-5)


def _cmix(kind):
    cm = _gm().condition(_z()[:, :2])
    if kind == "scales <= 0":
        return G.DiagonalConditionalMixture(cm.log_weights, cm.means, jnp.zeros(cm.means.shape))
    if kind == "scale_tril upper triangle":
        return cm.replace(scale_tril=jnp.swapaxes(cm.scale_tril, -1, -2))
    if kind == "log_weights NaN":
        return cm.replace(log_weights=cm.log_weights.at[0, 0].set(jnp.nan))
    if kind == "means Inf":
        return cm.replace(means=cm.means.at[0, 0, 0].set(jnp.inf))
    raise KeyError(kind)


CMIX_FAULTS = {
    "scales <= 0": "positive",
    "scale_tril upper triangle": "lower-triangular",
    "log_weights NaN": "NaN or \\+Inf",
    "means Inf": "NaN or Inf",
}
CMIX_USERS = {
    "log_prob": lambda cm: cm.log_prob(_z()[:, 2:]),
    "mean": lambda cm: cm.mean(),
    "covariance": lambda cm: cm.covariance(),
    "sample": lambda cm: cm.sample(jax.random.key(0), 3),
}


@pytest.mark.parametrize("user", sorted(CMIX_USERS))
@pytest.mark.parametrize("fault", sorted(CMIX_FAULTS))
def test_bad_conditional_mixture_parameters(fault, user):
    with pytest.raises(ValueError, match=CMIX_FAULTS[fault]):
        CMIX_USERS[user](_cmix(fault))


# ---- bad scalar arguments and states ------------------------------------------------------

SCALARS = {
    "GaussianMixture.sample n=-1": (lambda: _gm().sample(jax.random.key(0), -1), ValueError, "n must be"),
    "GaussianMixture.sample n=2.5": (lambda: _gm().sample(jax.random.key(0), 2.5), TypeError, "n must be"),
    "ConditionalMixture.sample n=-1": (
        lambda: _gm().condition(_z()[:, :2]).sample(jax.random.key(0), -1),
        ValueError,
        "n must be",
    ),
    "infonce tau=0": (lambda: L.infonce(_z(), _z(), tau=0.0), ValueError, "tau"),
    "infonce tau=-1": (lambda: L.infonce(_z(), _z(), tau=-1.0), ValueError, "tau"),
    "infonce tau=nan": (lambda: L.infonce(_z(), _z(), tau=float("nan")), ValueError, "tau"),
    "infonce tau=inf": (lambda: L.infonce(_z(), _z(), tau=float("inf")), ValueError, "tau"),
    "infonce tau='a'": (lambda: L.infonce(_z(), _z(), tau="a"), TypeError, "tau"),
    "GaussianStats.update momentum=2": (
        lambda: G.GaussianStats.zeros(D).update(_z(), momentum=2.0),
        ValueError,
        "momentum",
    ),
    "GaussianStats.update momentum=-0.1": (
        lambda: G.GaussianStats.zeros(D).update(_z(), momentum=-0.1),
        ValueError,
        "momentum",
    ),
    "GaussianStats.update momentum=nan": (
        lambda: G.GaussianStats.zeros(D).update(_z(), momentum=float("nan")),
        ValueError,
        "momentum",
    ),
    "EMState.create dim=0": (lambda: em.EMState.create(jax.random.key(0), 2, 0), ValueError, "dim"),
    "EMState.create dim=2.5": (lambda: em.EMState.create(jax.random.key(0), 2, 2.5), TypeError, "dim"),
    "em.update N=0": (
        lambda: em.update(em.EMState.create(jax.random.key(0), 2, D), _z(0), jax.random.key(1)),
        ValueError,
        "at least 1 row",
    ),
    "em.update momentum=1": (
        lambda: em.update(em.EMState.create(jax.random.key(0), 2, D), _z(), jax.random.key(1), momentum=1.0),
        ValueError,
        "momentum",
    ),
    "smc.insert rank 1": (lambda: smc.insert(smc.ParticleBank.empty(8, D), _z()[0]), ValueError, r"\[N, D\]"),
    "smc.insert too many rows": (lambda: smc.insert(smc.ParticleBank.empty(4, D), _z()), ValueError, "capacity"),
    "smc.update kernel zero diagonal": (
        lambda: smc.update(smc.ParticleBank.empty(16, D), _z(), jax.random.key(0), jnp.diag(jnp.array([1.0, 0, 1, 1]))),
        ValueError,
        "positive diagonal",
    ),
    "smc.update kernel negative diagonal": (
        lambda: smc.update(smc.ParticleBank.empty(16, D), _z(), jax.random.key(0), -jnp.eye(D)),
        ValueError,
        "positive diagonal",
    ),
    "smc.update kernel upper": (
        lambda: smc.update(
            smc.ParticleBank.empty(16, D), _z(), jax.random.key(0), jnp.eye(D) + jnp.triu(jnp.ones((D, D)), 1)
        ),
        ValueError,
        "lower-triangular",
    ),
    "smc.update tempering=2": (
        lambda: smc.update(smc.ParticleBank.empty(16, D), _z(), jax.random.key(0), jnp.eye(D), tempering=2.0),
        ValueError,
        "tempering",
    ),
    "em.update NaN in the state": (
        lambda: em.update(
            em.EMState.create(jax.random.key(0), 2, D).replace(means=jnp.full((2, D), jnp.nan)), _z(), jax.random.key(1)
        ),
        ValueError,
        r"state.*means",
    ),
    "gng.update Inf in the state": (
        lambda: gng.update(gng.GNGState.create(6, D).replace(nodes=jnp.full((6, D), jnp.inf)), _z()),
        ValueError,
        r"state.*nodes",
    ),
    "ParticleBank.empty capacity=0": (lambda: smc.ParticleBank.empty(0, D), ValueError, "capacity"),
    "GNGState.create dim=0": (lambda: gng.update(gng.GNGState.create(6, 0), _z()), ValueError, "D"),
    **{
        f"{s}(num=2.5)": (
            lambda s=s: resampling.get_scheme(s)(jax.random.key(0), jnp.zeros(3), 2.5),
            TypeError,
            "num must be an integer",
        )
        for s in resampling.SCHEMES
    },
    **{
        f"{s}(num=0)": (lambda s=s: resampling.get_scheme(s)(jax.random.key(0), jnp.zeros(3), 0), ValueError, "num")
        for s in resampling.SCHEMES
    },
    "get_scheme unknown": (lambda: resampling.get_scheme("nope"), ValueError, "valid"),
    "gje_loss unknown estimator": (
        lambda: L.gje_loss(_z()[:, :2], _z()[:, 2:], estimator="x"),
        ValueError,
        "estimator",
    ),
    "GaussianMixture K=0": (
        lambda: G.GaussianMixture(jnp.zeros(0), jnp.zeros((0, D)), jnp.zeros((0, D, D))).log_prob(_z()),
        ValueError,
        "K >= 1",
    ),
    "from_covariances not PD": (
        lambda: G.GaussianMixture.from_covariances(jnp.zeros(1), jnp.zeros((1, 2)), -jnp.eye(2)[None]),
        ValueError,
        "positive definite",
    ),
    "condition split=D": (lambda: _gm().condition(_z()[:, :2], split=D), ValueError, "split"),
    "condition c wider than split": (lambda: _gm().condition(_z()[:, :3], split=2), ValueError, "columns"),
    "marginal start>=stop": (lambda: _gm().marginal(2, 2), ValueError, "start < stop"),
    "permute not a permutation": (lambda: _gm().permute([0, 0, 1, 2]), ValueError, "permutation"),
}


@pytest.mark.parametrize("case", sorted(SCALARS))
def test_bad_scalar_arguments(case):
    fn, exc, match = SCALARS[case]
    with pytest.raises(exc, match=match):
        fn()


@pytest.mark.parametrize("scheme", sorted(resampling.SCHEMES))
@pytest.mark.parametrize("weights", ["all -inf", "NaN", "+inf"])
def test_unusable_weights_under_jit_give_the_invalid_marker(scheme, weights):
    """Under jit the values are unknown at trace time: instead of plausible indices every
    index is -1 (documented), which jnp.take(..., mode='fill') turns into the fill value."""
    lw = {
        "all -inf": jnp.full(4, -jnp.inf),
        "NaN": jnp.array([0.0, jnp.nan, 0, 0]),
        "+inf": jnp.array([0.0, jnp.inf, 0, 0]),
    }
    fn = resampling.get_scheme(scheme)
    idx = np.asarray(jax.jit(lambda w: fn(jax.random.key(0), w, 6))(lw[weights]))
    assert idx.tolist() == [-1] * 6
    good = np.asarray(jax.jit(lambda w: fn(jax.random.key(0), w, 6))(jnp.zeros(4)))
    assert good.min() >= 0 and good.max() <= 3


def test_bank_with_unusable_state_is_refused_by_an_eager_update():
    bank = smc.insert(smc.ParticleBank.empty(4, 2), jnp.arange(8.0).reshape(4, 2))
    for bad in (
        bank.replace(log_weights=bank.log_weights.at[1].set(jnp.nan)),
        bank.replace(particles=bank.particles.at[0, 0].set(jnp.inf)),
    ):
        with pytest.raises(ValueError, match="bank"):
            smc.update(bad, jnp.ones((2, 2)), jax.random.key(0), jnp.eye(2))


def test_sweep_size():
    """The sweep stays at least as large as the issue asked (250 cases)."""
    n = len(FUNCTIONS) * len(FAULTS) + len(PARAM_CASES) + len(CMIX_FAULTS) * len(CMIX_USERS)
    n += len(SCALARS) + 3 * len(resampling.SCHEMES)
    assert n >= 250, n
