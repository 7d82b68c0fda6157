"""Prototype GMJE by online EM (METHOD section 4): stop-gradient mixture parameters
updated from EMA sufficient statistics, k-means++ initialisation from the first batch,
and re-seeding of dead components at poorly explained samples.

The EMA of the sufficient statistics (N_k, sum gamma z, sum gamma z z^T) is carried in
its normalised, centred form (weights pi_k, means mu_k, covariances Sigma_k): merging a
batch's statistics uses the pooled-variance identity, which is the same EMA without the
float32 cancellation of E[z z^T] - mu mu^T.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from gje_jax import _validation as v
from gje_jax import linalg
from gje_jax.gaussian import DEFAULT_EPS_ABS, DEFAULT_EPS_REL, check_pooled_ridge, pooled_ridge, regularize
from gje_jax.mixture import GaussianMixture, component_log_probs
from gje_jax.remedies import reseed

RESEED_WEIGHTS = ("earned", "uniform")


@flax.struct.dataclass
class EMState:
    """weights [K] (sum to one); means [K, D]; covs [K, D, D] (without the ridge);
    scale_tril [K, D, D] factors of the regularised covs (cached for the loss);
    initialized [] bool; num_reseeded [] int32 (cumulative, for logging).

    Example:
      >>> state = gje_jax.remedies.em.EMState.create(jax.random.key(0), num_components=3, dim=2)
      >>> state.means.shape, bool(state.initialized)
      ((3, 2), False)
    """

    weights: jax.Array
    means: jax.Array
    covs: jax.Array
    scale_tril: jax.Array
    initialized: jax.Array
    num_reseeded: jax.Array

    @classmethod
    def create(cls, key: jax.Array, num_components: int, dim: int, dtype=jnp.float32) -> EMState:
        """Placeholder prototypes (standard normal means, identity covariances); the first
        `update` replaces them by k-means++ on its batch."""
        if num_components < 1:
            raise ValueError(f"Online EM needs num_components >= 1, got {num_components}.")
        v.check_int(dim, "dim", minimum=1)
        k, d = num_components, dim
        eye = jnp.broadcast_to(jnp.eye(d, dtype=dtype), (k, d, d))
        return cls(
            jnp.full((k,), 1.0 / k, dtype),
            jax.random.normal(key, (k, d), dtype),
            eye,
            eye,
            jnp.zeros((), bool),
            jnp.zeros((), jnp.int32),
        )

    def mixture(self) -> GaussianMixture:
        """The current prototypes as a (stop-gradient) GaussianMixture."""
        s = jax.lax.stop_gradient(self)
        return GaussianMixture(jnp.log(jnp.maximum(s.weights, 1e-30)), s.means, s.scale_tril)


def kmeans_plus_plus(key: jax.Array, z: jax.Array, num: int) -> jax.Array:
    """k-means++ seeding: the first centre uniformly, each next one with probability
    proportional to the squared distance to the nearest chosen centre.

    Args:
      key: PRNG key; z: [N, D] points (N >= 1); num: number of centres K.

    Returns:
      [K] int32 indices into z.

    Example:
      >>> z = jnp.concatenate([jnp.zeros((50, 2)), 10 + jnp.zeros((50, 2))])
      >>> idx = gje_jax.remedies.em.kmeans_plus_plus(jax.random.key(0), z, 2)   # indices into z
      >>> sorted(z[idx, 0].tolist())                               # one seed per cluster
      [0.0, 10.0]
    """
    z = v.as_float(z, "z")
    v.check_rank(z, 2, "z", "[N, D]")
    n = z.shape[0]
    sq = jnp.sum(z * z, axis=-1)
    keys = jax.random.split(key, num)
    first = jax.random.randint(keys[0], (), 0, n)

    def body(i, carry):
        idx, best = carry
        c = z[idx[i - 1]]
        d2 = jnp.maximum(sq + jnp.sum(c * c) - 2.0 * z @ c, 0.0)
        best = jnp.minimum(best, d2)
        # All points already chosen (best == 0 everywhere): fall back to uniform.
        logits = jnp.where(jnp.any(best > 0), jnp.log(jnp.where(best > 0, best, 1.0)), 0.0)
        logits = jnp.where(jnp.any(best > 0) & (best <= 0), -jnp.inf, logits)
        return idx.at[i].set(jax.random.categorical(keys[i], logits)), best

    idx = jnp.zeros((num,), jnp.int32).at[0].set(first)
    idx, _ = jax.lax.fori_loop(1, num, body, (idx, jnp.full((n,), jnp.inf, z.dtype)))
    return idx


def _factor(weights, means, covs, eps_rel, eps_abs, pooled_eps_rel, pooled_shape):
    # The pooled ridge is a floor relative to the whole mixture's spread (scale-equivariant).
    ridge = pooled_ridge(weights, means, covs, pooled_eps_rel, pooled_shape) if not v.is_zero(pooled_eps_rel) else 0.0
    return linalg.cholesky(regularize(covs, eps_rel, eps_abs) + ridge)


def kmeans_moments(key: jax.Array, z: jax.Array, num: int):
    """K-means++ seeds, one hard assignment, per-cluster moments shrunk towards the batch
    covariance (so clusters with few points stay positive definite).

    Args:
      key: PRNG key; z: [N, D] points; num: K.

    Returns:
      (weights [K] summing to one, means [K, D], covariances [K, D, D]; no ridge).

    Example:
      >>> z = jnp.concatenate([jnp.zeros((30, 1)), 10 + jnp.zeros((10, 1))])
      >>> w, mu, cov = gje_jax.remedies.em.kmeans_moments(jax.random.key(0), z, 2)
      >>> sorted(np.asarray(w, float).round(3).tolist()), sorted(mu[:, 0].tolist())   # (10 + 1) / 42, (30 + 1) / 42
      ([0.262, 0.738], [0.0, 10.0])
    """
    k = num
    n = z.shape[0]
    centres = z[kmeans_plus_plus(key, z, k)]
    d2 = jnp.sum(z * z, -1, keepdims=True) + jnp.sum(centres * centres, -1) - 2.0 * z @ centres.T
    hard = jax.nn.one_hot(jnp.argmin(d2, axis=1), k, dtype=z.dtype)
    share, mean, cov = reseed.responsibility_moments(z, hard)
    counts = share * n
    r = z - jnp.mean(z, axis=0)
    glob = (r.T @ r) / n
    mean = jnp.where(counts[:, None] > 0, mean, centres)
    cov = (counts[:, None, None] * cov + glob) / (counts[:, None, None] + 1.0)
    weights = (counts + 1.0) / (n + k)
    return weights, mean, cov


def _initialize(
    state: EMState, z: jax.Array, key: jax.Array, eps_rel, eps_abs, pooled_eps_rel, pooled_shape
) -> EMState:
    weights, mean, cov = kmeans_moments(key, z, state.means.shape[0])
    scale_tril = _factor(weights, mean, cov, eps_rel, eps_abs, pooled_eps_rel, pooled_shape)
    return EMState(weights, mean, cov, scale_tril, jnp.ones((), bool), state.num_reseeded)


def update(
    state: EMState,
    z: jax.Array,
    key: jax.Array,
    *,
    momentum: float = 0.9,
    dead_threshold: float | None = None,
    eps_rel: float = DEFAULT_EPS_REL,
    eps_abs: float = DEFAULT_EPS_ABS,
    pooled_eps_rel: float = 0.0,
    pooled_shape: str = "isotropic",
    reseed_at: str = "best",
    reseed_weight: str = "earned",
    split_merge: bool = False,
) -> tuple[EMState, dict[str, jax.Array]]:
    """One online-EM step on the batch z [N, D] (stop-gradient).

    E-step: responsibilities under the current prototypes. M-step: EMA (momentum) of the
    normalised sufficient statistics, merged with the pooled-variance identity. Dead
    components (weight < dead_threshold, default 1 / (10 K)) are re-seeded
    (`gje_jax.remedies.reseed`): reseed_at='split' halves the live component that best
    explains a badly explained sample; 'sample' moves them, k-means++ style, to samples
    drawn with probability increasing in their NLL under the mixture, with the weight they
    earn on the batch (reseed_weight='earned') or 1 / K ('uniform'; 'sample' with
    'uniform' is the behaviour before December 2026); 'best' makes both and keeps the one
    under which the batch is more likely (a split wins where the parent's data is not one
    Gaussian, e.g. two clusters). split_merge=True adds, at a step where nothing is dead,
    `reseed.held_out_merge_split` on the M-step's mixture: the lightest component merged into
    its nearest, the freed slot a half of a split, kept where the half of the batch the move
    was not fitted on is more likely (than under the unmoved mixture given the same refit).
    Re-seeding only fires for dead components; a component that spans two clusters beside
    live ones that share one is the local optimum this leaves.
    The first call on an uninitialised state seeds by k-means++ instead.

    Each factor is of Sigma_k + eps I + R with eps = eps_rel tr(Sigma_k) / D + eps_abs and
    R the pooled ridge (`gje_jax.pooled_ridge` of pooled_eps_rel and pooled_shape: the
    mixture's average variance times I, or its total covariance). Only the pooled part
    bounds how tight a component can get relative to the spread of the embeddings;
    without it, embeddings trained against the mixture can pack into K tight clusters.

    Returns (state, metrics {'em_log_likelihood', 'em_reseeded', 'em_min_weight',
    'em_split' (1 when this step re-seeded by splitting), and with split_merge
    'em_split_merge' (1 when the move was kept)}).

    Example:
      >>> z = jnp.concatenate([jax.random.normal(jax.random.key(0), (256, 2)) - 5, jax.random.normal(jax.random.key(1), (256, 2)) + 5])
      >>> state = gje_jax.remedies.em.EMState.create(jax.random.key(2), num_components=2, dim=2)
      >>> update = jax.jit(gje_jax.remedies.em.update, static_argnames="momentum")
      >>> for i in range(10):
      ...     state, metrics = update(state, z, jax.random.key(i), momentum=0.5)
      >>> sorted(jnp.round(state.means[:, 0]).tolist())
      [-5.0, 5.0]
    """
    z = jax.lax.stop_gradient(v.as_float(z, "z"))
    v.check_rank(z, 2, "z", "[N, D]")
    k, d = state.means.shape
    if z.shape[1] != d:
        raise ValueError(f"z has D = {z.shape[1]} but the prototypes have D = {d}.")
    v.check_nonempty(z.shape[0], f"z (shape {tuple(z.shape)})")
    v.check_finite_if_concrete(z, "z")
    v.check_state_if_concrete(state, "state")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
    check_pooled_ridge(pooled_eps_rel, pooled_shape)
    if reseed_at not in reseed.PLACES + ("best",):
        raise ValueError(f"reseed_at={reseed_at!r} is unknown; valid: {list(reseed.PLACES + ('best',))}.")
    if reseed_weight not in RESEED_WEIGHTS:
        raise ValueError(f"reseed_weight={reseed_weight!r} is unknown; valid: {list(RESEED_WEIGHTS)}.")
    threshold = reseed.default_threshold(k, dead_threshold)
    k_init, k_seed = jax.random.split(key)
    state = jax.lax.cond(
        state.initialized,
        lambda s: s,
        lambda s: _initialize(s, z, k_init, eps_rel, eps_abs, pooled_eps_rel, pooled_shape),
        state,
    )
    log_w = jnp.log(jnp.maximum(state.weights, 1e-30))
    comp, _ = component_log_probs(z, state.means, state.scale_tril)
    joint = log_w + comp
    log_p = jax.nn.logsumexp(joint, axis=-1)
    resp = jnp.exp(joint - log_p[:, None])
    share, mean_b, cov_b = reseed.responsibility_moments(z, resp)
    a, b = momentum * state.weights, (1.0 - momentum) * share
    tot = jnp.maximum(a + b, 1e-30)
    fa, fb = a / tot, b / tot
    mean = fa[:, None] * state.means + fb[:, None] * mean_b
    delta = state.means - mean_b
    cov = (
        fa[:, None, None] * state.covs
        + fb[:, None, None] * cov_b
        + (fa * fb)[:, None, None] * delta[:, :, None] * delta[:, None, :]
    )
    weights = (a + b) / jnp.sum(a + b)
    dead = weights < threshold

    def factor(w, m, c):
        return _factor(w, m, c, eps_rel, eps_abs, pooled_eps_rel, pooled_shape)

    def split_proposal():
        w, m, c, changed = reseed.split(k_seed, z, joint, weights, mean, cov, dead)
        return (w, m, c, factor(w, m, c)), jnp.any(changed)

    def sample_proposal():
        # At badly explained samples (k-means++ style), with the live components' average covariance.
        m = jnp.where(dead[:, None], z[reseed.picks(k_seed, log_p, k)], mean)
        alive_cov = jnp.sum(weights[:, None, None] * cov, axis=0) / jnp.sum(weights)
        c = jnp.where(dead[:, None, None], alive_cov, cov)
        w = jnp.where(dead, 1.0 / k, weights)
        w = w / jnp.sum(w)
        if reseed_weight == "earned":
            w = reseed.earned_weights(z, w, m, factor(w, m, c), dead)
        # The pooled ridge follows the weights: the factors are made with the final ones.
        return w, m, c, factor(w, m, c)

    def reseeded(_):
        if reseed_at == "split":
            return split_proposal()
        if reseed_at == "sample":
            return sample_proposal(), jnp.zeros((), bool)
        (a, did_split), b = split_proposal(), sample_proposal()
        take = did_split & (
            reseed.batch_log_likelihood(z, a[0], a[1], a[3]) > reseed.batch_log_likelihood(z, b[0], b[1], b[3])
        )
        return jax.tree.map(lambda x, y: jnp.where(take, x, y), a, b), take

    def kept(_):
        return (weights, mean, cov, factor(weights, mean, cov)), jnp.zeros((), bool)

    (weights, mean, cov, scale_tril), split = jax.lax.cond(jnp.any(dead), reseeded, kept, None)
    moved = None
    if split_merge:
        if z.shape[0] < 2:
            raise ValueError(f"split_merge needs a batch of at least 2 (one to fit, one to judge), got {z.shape[0]}.")
        comp_m, _ = component_log_probs(z, mean, scale_tril)
        proposal = reseed.held_out_merge_split(
            jax.random.fold_in(k_seed, 1),
            z,
            jnp.log(jnp.maximum(weights, 1e-30)) + comp_m,
            weights,
            mean,
            cov,
            scale_tril,
            factor,
            eps_rel=eps_rel,
            eps_abs=eps_abs,
            baseline_em=True,
        )
        moved = ~jnp.any(dead) & (proposal[5] > 0)
        weights, mean, cov, scale_tril = jax.tree.map(
            lambda a, b: jnp.where(moved, a, b), proposal[:4], (weights, mean, cov, scale_tril)
        )
    new, metrics = _finish(state, weights, mean, cov, scale_tril, dead, log_p)
    metrics["em_split"] = split.astype(jnp.float32)
    if moved is not None:
        metrics["em_split_merge"] = moved.astype(jnp.float32)
    return new, metrics


def _finish(state, weights, mean, cov, scale_tril, dead, log_p):
    new = EMState(weights, mean, cov, scale_tril, state.initialized, state.num_reseeded)
    new = new.replace(num_reseeded=state.num_reseeded + jnp.sum(dead).astype(jnp.int32))
    metrics = {
        "em_log_likelihood": jnp.mean(log_p),
        "em_reseeded": jnp.sum(dead).astype(jnp.float32),
        "em_min_weight": jnp.min(weights),
    }
    return new, metrics
