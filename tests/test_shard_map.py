"""Every density, loss and conditional inside a user's own parallel code: jax.shard_map
(value and gradient, K = 1 and K > 1, the default check_vma), jit with shardings, vmap, and
loss weights / temperatures passed as traced values. Each equals the one-device result.

Each case is f(params, z) -> [] on a batch z [N, 4] (c = z[:, :2], t = z[:, 2:]). The batch
first goes through params['w'] [4, 4], so every loss has a parameter gradient. Under
shard_map a shard's f sees its own rows, so the reference is f on each shard's rows on one
device, and the parameter gradient is the sum of the shards' gradients (the transpose of
the replicated parameters' broadcast is a psum).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gje_jax import losses
from gje_jax.conditional import ConditionalMixture, DiagonalConditionalMixture
from gje_jax.mixture import GaussianMixture
from gje_jax.remedies import smc

N, D, SHARDS = 32, 4, 4


def _params(k):
    keys = jax.random.split(jax.random.key(k), 4)
    return {
        "w": jnp.eye(D) + 0.1 * jax.random.normal(keys[0], (D, D)),
        "log_weights": 0.3 * jax.random.normal(keys[1], (k,)),
        "means": jax.random.normal(keys[2], (k, D)),
        "factors": jnp.broadcast_to(jnp.eye(D), (k, D, D)) * 0.8
        + 0.1 * jnp.tril(jax.random.normal(keys[3], (k, D, D)), -1),
    }


def _mixture(p):
    return GaussianMixture(p["log_weights"], p["means"], p["factors"])


def _split(p, z):
    z = z @ p["w"]
    return z[:, :2], z[:, 2:]


def _conditional(p, c, diagonal):
    k = p["means"].shape[0]
    loc = (c @ p["w"][:2, :2])[:, None, :] + p["means"][None, :, 2:]  # [N, K, 2]
    if diagonal:
        return DiagonalConditionalMixture(jnp.broadcast_to(p["log_weights"], (c.shape[0], k)), loc, jnp.exp(loc) + 0.5)
    return ConditionalMixture(jnp.broadcast_to(p["log_weights"], (c.shape[0], k)), loc, p["factors"][:, 2:, 2:])


CASES = {
    "log_prob K=1": (1, lambda p, z: _mixture(p).log_prob(z @ p["w"]).mean()),
    "log_prob K=3": (3, lambda p, z: _mixture(p).log_prob(z @ p["w"]).mean()),
    "responsibilities K=3": (3, lambda p, z: _mixture(p).responsibilities(z @ p["w"])[:, 0].mean()),
    "condition K=1": (1, lambda p, z: _mixture(p).condition(_split(p, z)[0]).log_prob(_split(p, z)[1]).mean()),
    "condition K=3": (3, lambda p, z: _mixture(p).condition(_split(p, z)[0]).log_prob(_split(p, z)[1]).mean()),
    "ConditionalMixture full": (
        3,
        lambda p, z: _conditional(p, *_split(p, z)[:1], False).log_prob(_split(p, z)[1]).mean(),
    ),
    "DiagonalConditionalMixture": (
        3,
        lambda p, z: _conditional(p, *_split(p, z)[:1], True).log_prob(_split(p, z)[1]).mean(),
    ),
    "gje_loss batch": (1, lambda p, z: losses.gje_loss(*_split(p, z), estimator="batch")[0]),
    "gje_loss param": (1, lambda p, z: losses.gje_loss(*_split(p, z), estimator="param", density=_mixture(p))[0]),
    "gmje_loss joint K=3": (
        3,
        lambda p, z: losses.gmje_loss(*_split(p, z), _mixture(p), lambda_geo=1.0, lambda_bal=0.1)[0],
    ),
    "gmje_loss conditional K=3": (
        3,
        lambda p, z: losses.gmje_loss(*_split(p, z), _mixture(p), objective="conditional", lambda_geo=1.0)[0],
    ),
    "gmje_contrastive": (1, lambda p, z: losses.gmje_contrastive(*_split(p, z), tau=0.5)[0]),
    "infonce": (1, lambda p, z: losses.infonce(*_split(p, z), tau=0.2)[0]),
    "vicreg_loss": (1, lambda p, z: losses.vicreg_loss(*_split(p, z))[0]),
    "predictor_loss": (1, lambda p, z: losses.predictor_loss(*_split(p, z))[0]),
    "geometry_term": (1, lambda p, z: losses.geometry_term(*_split(p, z))),
    "smc kernel conditional": (
        3,
        lambda p, z: smc.kernel_conditional_log_prob(
            *_split(p, z), p["means"], p["log_weights"], p["factors"][0]
        ).mean(),
    ),
}


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.asarray(jax.devices()[:SHARDS]), ("data",))


def _batch():
    return jax.random.normal(jax.random.key(7), (N, D))


@pytest.mark.parametrize("name", sorted(CASES))
def test_shard_map_jit_with_shardings_and_vmap_equal_one_device(name, mesh):
    k, f = CASES[name]
    params, z = _params(k), _batch()
    shards = z.reshape(SHARDS, N // SHARDS, D)
    one_device = jax.jit(jax.value_and_grad(f))  # the reference: jitted, eager tracing is slow
    ref = [one_device(params, s) for s in shards]
    ref_vals = np.asarray([v for v, _ in ref])

    # shard_map: each shard's value; the replicated parameters' gradient sums the shards'.
    def per_shard(params, z):
        val, grad = jax.value_and_grad(f)(params, z)
        return val[None], grad

    sharded = jax.jit(jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P())))
    vals, grads = sharded(params, z)
    np.testing.assert_allclose(vals, ref_vals, rtol=2e-5, atol=2e-5)
    want = jax.tree.map(lambda *g: sum(g), *[g for _, g in ref])
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    # jit with the batch sharded over the mesh: the global batch's value and gradient.
    val, grad = one_device(params, z)
    zs = jax.device_put(z, NamedSharding(mesh, P("data")))
    val_s, grad_s = one_device(jax.device_put(params, NamedSharding(mesh, P())), zs)
    np.testing.assert_allclose(val_s, val, rtol=2e-5, atol=2e-5)
    for a, b in zip(jax.tree.leaves(grad_s), jax.tree.leaves(grad), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    # vmap over the shards: the per-shard values.
    np.testing.assert_allclose(jax.jit(jax.vmap(f, in_axes=(None, 0)))(params, shards), ref_vals, rtol=2e-5, atol=2e-5)


# (loss of a weight, the weight tried): 0 for the weights whose term a Python 0 skips.
WEIGHTED = {
    "gje_loss lambda_geo=0": (lambda w, c, t: losses.gje_loss(c, t, lambda_geo=w)[0], 0.0),
    "gje_loss lambda_geo=0.7": (lambda w, c, t: losses.gje_loss(c, t, lambda_geo=w)[0], 0.7),
    "gmje_loss lambda_geo=0": (lambda w, c, t: losses.gmje_loss(c, t, _mixture(_params(3)), lambda_geo=w)[0], 0.0),
    "gmje_loss lambda_bal": (lambda w, c, t: losses.gmje_loss(c, t, _mixture(_params(3)), lambda_bal=w)[0], 0.3),
    "infonce tau": (lambda w, c, t: losses.infonce(c, t, tau=w)[0], 0.2),
    "gmje_contrastive tau": (lambda w, c, t: losses.gmje_contrastive(c, t, tau=w)[0], 0.2),
    "vicreg_loss sim_weight": (lambda w, c, t: losses.vicreg_loss(c, t, sim_weight=w)[0], 0.7),
}


@pytest.mark.parametrize("name", sorted(WEIGHTED))
def test_traced_loss_weights_and_temperatures_equal_python_numbers(name):
    """A weight traced inside jit (a schedule, say) gives the value and gradient of the same
    weight passed as a Python number; a traced 0 computes the term and weights it by 0."""
    f, weight = WEIGHTED[name]
    z = _batch()
    c, t = z[:, :2], z[:, 2:]
    want, want_grad = jax.jit(jax.value_and_grad(f, argnums=1), static_argnums=0)(weight, c, t)
    got, got_grad = jax.jit(jax.value_and_grad(f, argnums=1))(jnp.float32(weight), c, t)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    # ... and the gradient with respect to the weight itself exists and is finite.
    assert np.isfinite(jax.jit(jax.grad(f))(jnp.float32(weight), c, t))


def test_k6_mixture_nll_gradient_under_shard_map_equals_one_device_within_1e5(mesh):
    """The mixture NLL of a whole batch, sharded over 4 devices (the replicated parameters'
    gradient is summed over the shards by shard_map's own transpose), against the same NLL
    on one device: every gradient entry within 1e-5."""
    params, z = _params(6), _batch()

    def nll(p, z):
        return -_mixture(p).log_prob(z @ p["w"]).sum()

    sharded = jax.jit(jax.shard_map(jax.grad(nll), mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))
    got, want = sharded(params, z), jax.jit(jax.grad(nll))(params, z)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5
