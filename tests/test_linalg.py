"""Cholesky-factor linear algebra against numpy/scipy float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from gje_jax import linalg
from tests.helpers import random_spd


@pytest.mark.parametrize("d", [1, 2, 7, 16, 17, 33, 100, 130])
def test_cholesky_and_inverse_match_numpy(d):
    rng = np.random.default_rng(d)
    covs = np.stack([random_spd(rng, d) for _ in range(3)])
    scale_tril = np.asarray(jax.jit(linalg.cholesky)(jnp.asarray(covs, jnp.float32)))
    ref = np.linalg.cholesky(covs)
    np.testing.assert_allclose(scale_tril, ref, atol=2e-5 * np.abs(ref).max())
    assert np.all(np.triu(scale_tril, 1) == 0)
    inv = np.asarray(jax.jit(linalg.tril_inverse)(jnp.asarray(ref, jnp.float32)))
    ref_inv = np.stack([scipy.linalg.solve_triangular(l, np.eye(d), lower=True) for l in ref])
    np.testing.assert_allclose(inv, ref_inv, atol=2e-5 * np.abs(ref_inv).max())


def test_solve_tril_matches_triangular_solve():
    rng = np.random.default_rng(0)
    l = np.linalg.cholesky(random_spd(rng, 40))
    b = rng.normal(size=(40, 5))
    x = np.asarray(linalg.solve_tril(jnp.asarray(l, jnp.float32), jnp.asarray(b, jnp.float32)))
    np.testing.assert_allclose(x, scipy.linalg.solve_triangular(l, b, lower=True), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cond", [1e3, 1e5, 1e7])
def test_ill_conditioned_inputs_stay_accurate(cond):
    # float32 has eps ~ 6e-8: the factor's backward error must stay at that level.
    rng = np.random.default_rng(1)
    cov = random_spd(rng, 24, cond=cond)
    scale_tril = np.asarray(linalg.cholesky(jnp.asarray(cov, jnp.float32)), np.float64)
    assert np.all(np.isfinite(scale_tril))
    rel = np.linalg.norm(scale_tril @ scale_tril.T - cov) / np.linalg.norm(cov)
    assert rel < 1e-5
    w = np.asarray(linalg.tril_inverse(jnp.asarray(np.linalg.cholesky(cov), jnp.float32)), np.float64)
    # Forward error of a triangular inverse ~ cond(L) * eps, cond(L) = sqrt(cond).
    assert np.linalg.norm(w @ np.linalg.cholesky(cov) - np.eye(24)) < 1e-5 * np.sqrt(cond) + 1e-5


def test_not_positive_definite_gives_nan_not_garbage():
    bad = jnp.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1
    assert np.isnan(np.asarray(linalg.cholesky(bad))).any()


def test_cholesky_gradient_matches_lapack_cholesky():
    rng = np.random.default_rng(2)
    cov = jnp.asarray(np.stack([random_spd(rng, 20) for _ in range(2)]), jnp.float32)
    proj = jnp.asarray(rng.normal(size=(2, 20, 20)), jnp.float32)
    ours = jax.grad(lambda a: jnp.sum(linalg.cholesky(a) * proj))(cov)
    ref = jax.grad(lambda a: jnp.sum(jnp.linalg.cholesky(a) * proj))(cov)
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max())


def test_tril_inverse_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    l = jnp.asarray(np.linalg.cholesky(random_spd(rng, 20)), jnp.float64 if jax.config.x64_enabled else jnp.float32)
    proj64 = rng.normal(size=(20, 20))
    proj = jnp.asarray(proj64, l.dtype)
    f = lambda x: jnp.sum(linalg.tril_inverse(x) * proj)
    grad = np.asarray(jax.grad(f)(l))
    # Directional derivative along a lower-triangular direction vs central differences in float64.
    direction = np.tril(rng.normal(size=(20, 20)))
    l64 = np.asarray(l, np.float64)
    h = 1e-6
    fd = (np.sum(np.linalg.inv(l64 + h * direction) * proj64) - np.sum(np.linalg.inv(l64 - h * direction) * proj64)) / (
        2 * h
    )
    np.testing.assert_allclose(np.sum(grad * direction), fd, rtol=1e-3)


def test_forward_mode_and_vmap():
    rng = np.random.default_rng(4)
    cov = jnp.asarray(np.stack([random_spd(rng, 18) for _ in range(4)]), jnp.float32)
    batched = jax.vmap(linalg.cholesky)(cov)
    np.testing.assert_allclose(batched, linalg.cholesky(cov), atol=1e-6)
    tangent = jnp.asarray(rng.normal(size=cov.shape), jnp.float32)
    _, jvp = jax.jvp(linalg.cholesky, (cov,), (tangent,))
    _, ref = jax.jvp(jnp.linalg.cholesky, (cov,), (tangent,))
    np.testing.assert_allclose(jvp, ref, atol=1e-4 * np.abs(ref).max())


def test_unconstrained_parameterisation_round_trip():
    rng = np.random.default_rng(5)
    raw = jnp.asarray(rng.normal(size=(3, 6, 6)), jnp.float32)
    l = linalg.scale_tril_from_unconstrained(raw, floor=1e-3)
    assert np.all(np.diagonal(l, axis1=-2, axis2=-1) > 1e-3)
    assert np.all(np.triu(np.asarray(l), 1) == 0)
    back = linalg.unconstrained_from_scale_tril(l, floor=1e-3)
    np.testing.assert_allclose(np.tril(back), np.tril(raw), atol=1e-5)


def test_no_lapack_call_in_mixture_gradient():
    """The deadlock answer: the gradient of a K > 1 mixture NLL has no LAPACK custom call."""
    import gje_jax

    k, d, n = 4, 20, 64

    def nll(z, mu, raw):
        gm = gje_jax.GaussianMixture.from_unconstrained(jnp.zeros(k), mu, raw)
        return -jnp.mean(gm.log_prob(z)) + linalg.cholesky(raw @ jnp.swapaxes(raw, 1, 2) + jnp.eye(d)).sum()

    args = (jnp.zeros((n, d)), jnp.zeros((k, d)), jnp.eye(d)[None].repeat(k, 0))
    hlo = jax.jit(jax.grad(nll, argnums=(0, 1, 2))).lower(*args).as_text()
    assert "lapack" not in hlo.lower() and "custom_call" not in hlo.lower()


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\[\.\.\., n, n\]"):
        linalg.cholesky(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="scale_tril"):
        linalg.tril_inverse(jnp.ones((3,)))
