"""Dead-component handling shared by the prototype mixtures (SGD prototypes and online EM):
where a re-seeded component goes, and the prior weight it enters with.

A component is dead when its weight (the EMA of its share of the responsibilities) falls
below a threshold. Two places (PLACES):

- 'split' (`split`; the SGD prototypes' default): the dead component and the live one that
  best explains a badly explained sample become that live component's two halves, which
  keep its mass, mean and covariance. Nothing is created that no data supports, and a
  component that spans two clusters is what gets divided.
- 'sample' (`picks`, `earned_weights`): it is moved to a batch sample drawn with
  probability increasing in the sample's NLL under the mixture (k-means++ style: the data
  the mixture explains worst), given the average covariance of the live components, and
  enters with the weight it *earns*: its mean responsibility on the batch when it competes
  at a provisional weight of 1 / K. A component placed on an outlier thus starts near zero instead of taking 1 / K
  of the prior mass from the components that explain the data. Measured in encoder
  training (synthetic sampling task, online EM), that is also its weakness: a component
  that earns little beside a broad live one dies again before it can take a cluster from
  it, and the mixture stays broad (own-density precision 0.000 at k = 5, against 0.919
  with 'split').

Online EM's default, 'best', makes both proposals and keeps the one under which the batch
is more likely (`batch_log_likelihood`): a split only where the parent's data is not one
Gaussian.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gje_jax import linalg
from gje_jax.gaussian import regularize
from gje_jax.mixture import GaussianMixture, component_log_probs

PLACES = ("split", "sample")


def default_threshold(num_components: int, dead_threshold: float | None) -> float:
    """The weight below which a component counts as dead: dead_threshold, or 1 / (10 K) when
    it is None.

    Example:
      >>> gje_jax.remedies.reseed.default_threshold(8, None)
      0.0125
    """
    return 1.0 / (10 * num_components) if dead_threshold is None else float(dead_threshold)


def picks(key: jax.Array, log_p: jax.Array, num: int) -> jax.Array:
    """Indices [num] int32 into the batch, drawn with probability proportional to the batch
    NLL minus its minimum (the worst explained samples first; uniform when all are equal).

    Args:
      key: PRNG key; log_p: [N] log-density of each batch sample under the mixture; num: K.

    Example:
      >>> log_p = jnp.array([0.0, 0.0, -50.0])                      # sample 2 is explained worst
      >>> gje_jax.remedies.reseed.picks(jax.random.key(0), log_p, 4).tolist()
      [2, 2, 2, 2]
    """
    nll = -log_p
    logits = jnp.log(jnp.maximum(nll - jnp.min(nll), 1e-12))
    return jax.random.categorical(key, logits, shape=(num,))


def earned_weights(
    z: jax.Array,
    weights: jax.Array,
    means: jax.Array,
    scale_tril: jax.Array,
    reseeded: jax.Array,
    iterations: int = 5,
) -> jax.Array:
    """Prior weights [K] after re-seeding: the re-seeded components' weights are iterated
    M-steps for the weights alone on z, w_j <- mean_n r_nj(w), starting from 1 / K; the other
    components keep their relative shares of the remaining mass.

    One step from 1 / K overstates the share of a component whose true share is smaller
    (it competes at 1 / K); a few steps bring it towards the fixed point. Without that, a
    redundant component re-entered with an inflated weight, decayed below the threshold
    and was re-seeded again, holding prior mass it never earned (measured: 5% of the prior
    on components with under 1% of the held-out responsibility, against 1-3% with 5 steps).

    Args:
      z: [N, D] the batch; weights: [K] the weights before re-seeding (any value at the
        re-seeded entries); means [K, D], scale_tril [K, D, D]: the components after
        re-seeding; reseeded: [K] bool; iterations: M-steps (static).

    Returns:
      [K] float32, summing to one.

    Example:
      >>> z = jnp.concatenate([jnp.zeros((90, 1)), 10 + jnp.zeros((10, 1))])
      >>> means = jnp.array([[0.0], [10.0], [0.0]])                 # 1 and 2 re-seeded
      >>> L = jnp.broadcast_to(jnp.eye(1), (3, 1, 1))
      >>> w = gje_jax.remedies.reseed.earned_weights(z, jnp.ones(3) / 3, means, L, jnp.array([False, True, True]), iterations=1)
      >>> np.asarray(w, float).round(2).tolist()                    # 2 shares cluster 0 with 0
      [0.45, 0.1, 0.45]
    """
    k = weights.shape[0]
    kept = jnp.where(reseeded, 0.0, weights)
    kept_total = jnp.sum(kept)
    kept_share = jnp.where(kept_total > 0, kept / jnp.where(kept_total > 0, kept_total, 1.0), 0.0)
    comp, _ = component_log_probs(z, means, scale_tril)  # [N, K], once

    def m_step(_, new):
        # The live components share what the re-seeded ones do not hold.
        w = new + kept_share * (1.0 - jnp.sum(new))
        resp = jax.nn.softmax(jnp.log(jnp.maximum(w, 1e-30)) + comp, axis=-1)
        # A floor keeps every log-weight finite (an outlier's component earns ~0 and is
        # re-seeded again at the next step).
        return jnp.where(reseeded, jnp.maximum(jnp.mean(resp, axis=0), 1e-12), 0.0)

    new = jax.lax.fori_loop(0, iterations, m_step, jnp.where(reseeded, 1.0 / k, 0.0))
    out = new + kept_share * (1.0 - jnp.sum(new))
    return out / jnp.sum(out)


def split(
    key: jax.Array,
    z: jax.Array,
    log_joint: jax.Array,
    weights: jax.Array,
    means: jax.Array,
    covs: jax.Array,
    dead: jax.Array,
    power_iterations: int = 16,
):
    """Re-seed dead components by splitting live ones in two (moment-preserving).

    For each dead component j, in order: a batch sample is drawn as in `picks` (the data the
    mixture explains worst) and the live component that explains it best is the parent
    (each parent is split at most once per call). The parent N(mu, Sigma) is replaced by
    the two halves it has on either side of the hyperplane through mu normal to its
    principal axis v (power iteration): N(mu +- a, Sigma - a a^T) with
    a = sqrt(2 / pi) Sigma v / sqrt(v^T Sigma v), each with half of the parent's weight.
    The pair keeps the parent's mass, mean and covariance, so a split creates no prior mass
    that no data supports; EM then moves the halves apart where the parent spans two
    clusters. A dead component that finds no parent left keeps its place and weight.

    Args:
      key: PRNG key; z: [N, D] the batch; log_joint: [N, K] log w_k + log N(z_n | k)
        (chooses the parents); weights [K], means [K, D], covs [K, D, D] (PSD, no ridge
        needed): the mixture after its M-step; dead: [K] bool; power_iterations: static.

    Returns:
      (weights [K] summing to one, means [K, D], covs [K, D, D], changed [K] bool: the
      components that are now halves, dead ones and their parents).

    Example:
      >>> cov = jnp.array([[[4.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
      >>> z, joint = jnp.zeros((1, 2)), jnp.array([[0.0, -9.0]])       # component 0 explains it
      >>> w, mu, c, s = gje_jax.remedies.reseed.split(jax.random.key(0), z, joint,
      ...     jnp.array([0.99, 0.01]), jnp.zeros((2, 2)), cov, jnp.array([False, True]))
      >>> np.asarray(w, float).round(3).tolist(), np.abs(np.asarray(mu[:, 0], float)).round(3).tolist()   # 2 sqrt(2 / pi)
      ([0.5, 0.5], [1.596, 1.596])
      >>> s.tolist()
      [True, True]
    """
    k, d = means.shape
    log_p = jax.nn.logsumexp(log_joint, axis=-1)
    targets = picks(key, log_p, k)

    def one(j, carry):
        weights, means, covs, used = carry
        x = z[targets[j]]
        allowed = ~dead & ~used
        parent = jnp.argmax(jnp.where(allowed, log_joint[targets[j]], -jnp.inf))
        ok = dead[j] & jnp.any(allowed)
        sigma = covs[parent]
        # Start the power iteration towards the sample (a data-driven direction); the
        # fallback start only matters when x sits exactly on the parent's mean.
        start = x - means[parent]
        start = jnp.where(jnp.sum(start * start) > 0, start, jnp.ones((d,), z.dtype))

        def power(_, u):
            u = sigma @ u
            return u / jnp.maximum(jnp.linalg.norm(u), 1e-30)

        u = jax.lax.fori_loop(0, power_iterations, power, start / jnp.linalg.norm(start))
        su = sigma @ u
        a = jnp.sqrt(2.0 / jnp.pi) * su / jnp.sqrt(jnp.maximum(u @ su, 1e-30))
        half_cov = sigma - a[:, None] * a[None, :]
        half_w = weights[parent] / 2.0
        new_w = weights.at[parent].set(half_w).at[j].set(half_w)
        new_mu = means.at[parent].set(means[parent] + a).at[j].set(means[parent] - a)
        new_cov = covs.at[parent].set(half_cov).at[j].set(half_cov)
        pick = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        return (
            pick(new_w, weights),
            pick(new_mu, means),
            pick(new_cov, covs),
            used.at[parent].set(used[parent] | ok).at[j].set(used[j] | ok),
        )

    none = jnp.zeros((k,), bool)
    weights, means, covs, changed = jax.lax.fori_loop(0, k, one, (weights, means, covs, none))
    return weights / jnp.sum(weights), means, covs, changed


def batch_log_likelihood(z: jax.Array, weights: jax.Array, means: jax.Array, scale_tril: jax.Array) -> jax.Array:
    """Mean log-density [] of the batch z [N, D] under the mixture (weights [K] summing to
    one, means [K, D], scale_tril [K, D, D]): how two re-seeding proposals are compared.

    Example:
      >>> z = jnp.zeros((4, 1))
      >>> ll = gje_jax.remedies.reseed.batch_log_likelihood(z, jnp.array([1.0]), jnp.zeros((1, 1)), jnp.ones((1, 1, 1)))
      >>> round(float(ll), 4)                                       # log N(0 | 0, 1) = -log(2 pi) / 2
      -0.9189
    """
    return jnp.mean(GaussianMixture(jnp.log(jnp.maximum(weights, 1e-30)), means, scale_tril).log_prob(z))


def responsibility_moments(z: jax.Array, resp: jax.Array):
    """Per-component share [K], mean [K, D], covariance [K, D, D] of z [N, D] weighted by
    resp [N, K] (the M-step's statistics). The weighted residuals are one [K, N, D] array.

    Example:
      >>> share, mean, cov = gje_jax.remedies.reseed.responsibility_moments(jnp.array([[0.0], [2.0]]), jnp.ones((2, 1)))
      >>> share.tolist(), mean.tolist(), cov.tolist()
      ([1.0], [[1.0]], [[[1.0]]])
    """
    nk = jnp.sum(resp, axis=0)  # [K]
    safe = jnp.maximum(nk, 1e-12)
    mean = (resp.T @ z) / safe[:, None]
    r = z[None] - mean[:, None, :]  # [K, N, D]
    cov = jnp.einsum("kn,knd,kne->kde", resp.T, r, r) / safe[:, None, None]
    return nk / z.shape[0], mean, cov


def partial_em(z, weights, means, covs, changed, iterations: int = 3, eps_rel: float = 1e-4, eps_abs: float = 1e-6):
    """EM steps on the batch z [N, D] for the `changed` [K] components alone (the others
    keep their means and covariances; all weights are renormalised): where the halves of a
    split go once they compete for the data. The covariances are shrunk towards the given
    ones (D + 2 pseudo-points). -> (weights [K], means [K, D], covs [K, D, D]).

    Example:
      >>> z = jnp.concatenate([jnp.full((50, 1), -2.0), jnp.full((50, 1), 2.0)])
      >>> w, mu, cov = gje_jax.remedies.reseed.partial_em(z, jnp.array([0.5, 0.5]), jnp.array([[-1.0], [1.0]]),
      ...     jnp.ones((2, 1, 1)), jnp.array([False, True]))
      >>> np.asarray(mu[:, 0], float).round(2).tolist()                # only component 1 moves
      [-1.0, 2.0]
    """

    def step(_, carry):
        w, mu, cov = carry
        comp, _ = component_log_probs(z, mu, linalg.cholesky(regularize(cov, eps_rel, eps_abs)))
        resp = jax.nn.softmax(jnp.log(jnp.maximum(w, 1e-30)) + comp, axis=-1)
        share, m_new, c_new = responsibility_moments(z, resp)
        w = jnp.where(changed, share, w)
        # A batch holds a few dozen points per component: in D dimensions their scatter is
        # singular. Shrink it towards the proposal's covariance with D + 2 pseudo-points.
        n_k = (share * z.shape[0])[:, None, None]
        prior = jnp.float32(z.shape[1] + 2)
        c_new = (n_k * c_new + prior * covs) / (n_k + prior)
        return (
            w / jnp.sum(w),
            jnp.where(changed[:, None], m_new, mu),
            jnp.where(changed[:, None, None], c_new, cov),
        )

    return jax.lax.fori_loop(0, iterations, step, (weights, means, covs))


def merge_split(
    key: jax.Array, z: jax.Array, log_joint: jax.Array, weights: jax.Array, means: jax.Array, covs: jax.Array
):
    """A split-and-merge proposal for a mixture with no dead component: the lightest
    component j is merged into the component whose responsibilities overlap its own most
    (moment-matched: the pair's mass, mean and covariance), and the freed slot is re-seeded
    by `split` (the component that best explains a badly explained sample is halved).

    A component that spans two clusters beside a weak one that holds little is what this
    repairs: no component dies, so re-seeding never fires. The caller keeps the proposal
    only where the batch is more likely under it (`batch_log_likelihood`).

    Args:
      key: PRNG key; z: [N, D]; log_joint: [N, K] log w_k + log N(z_n | k); weights [K]
      (summing to one), means [K, D], covs [K, D, D].

    Returns:
      (weights [K], means [K, D], covs [K, D, D], changed [K] bool).

    Example:
      >>> z = jnp.array([[-3.0], [-3.1], [3.0], [3.1]])              # two clusters
      >>> w, mu, cov = jnp.array([0.98, 0.02]), jnp.array([[0.0], [0.2]]), jnp.array([[[9.0]], [[1.0]]])
      >>> joint = jnp.log(w) + jax.scipy.stats.norm.logpdf(z, mu[:, 0], jnp.sqrt(cov[:, 0, 0]))
      >>> w2, mu2, _, changed = gje_jax.remedies.reseed.merge_split(jax.random.key(0), z, joint, w, mu, cov)
      >>> np.abs(np.asarray(mu2[:, 0], float)).round(1).tolist(), np.asarray(w2, float).round(2).tolist()   # the halves of N(0, 8.9)
      ([2.4, 2.4], [0.5, 0.5])
    """
    weights, means, covs = jnp.asarray(weights), jnp.asarray(means), jnp.asarray(covs)
    k = weights.shape[0]
    resp = jax.nn.softmax(log_joint, axis=-1)  # [N, K]
    j = jnp.argmin(weights)
    overlap = jnp.where(jnp.arange(k) == j, -jnp.inf, resp[:, j] @ resp)
    i = jnp.argmax(overlap)
    wi, wj = weights[i], weights[j]
    w = wi + wj
    mu = (wi * means[i] + wj * means[j]) / w
    second = lambda a: covs[a] + means[a][:, None] * means[a][None, :]  # noqa: E731
    cov = (wi * second(i) + wj * second(j)) / w - mu[:, None] * mu[None, :]
    cov = 0.5 * (cov + cov.T)
    weights = weights.at[i].set(w).at[j].set(0.0)
    means = means.at[i].set(mu)
    covs = covs.at[i].set(cov)
    comp, _ = component_log_probs(z, means[i][None], linalg.cholesky(cov)[None])
    log_joint = log_joint.at[:, i].set(jnp.log(w) + comp[:, 0]).at[:, j].set(-jnp.inf)
    dead = jnp.arange(k) == j
    weights, means, covs, changed = split(key, z, log_joint, weights, means, covs, dead)
    return weights, means, covs, changed | (jnp.arange(k) == i)


def held_out_merge_split(
    key: jax.Array,
    z: jax.Array,
    log_joint: jax.Array,
    weights: jax.Array,
    means: jax.Array,
    covs: jax.Array,
    scale_tril: jax.Array,
    factor,
    eps_rel: float = 1e-4,
    eps_abs: float = 1e-6,
    baseline_em: bool = False,
):
    """A `merge_split` move proposed and placed (`partial_em`) on the even rows of the batch
    and judged on the odd ones: fitted and judged on one batch, two components beat one on
    any data (the fit's own gain), so only a gain on data the move never saw counts.

    Args:
      key: PRNG key; z: [N, D] the batch (N >= 2); log_joint: [N, K] log w_k + log N(z_n | k)
        under the current mixture; weights [K] (summing to one), means [K, D], covs [K, D, D]
        and scale_tril [K, D, D] (the factors the current mixture scores with): the current
        mixture; factor: (weights, means, covs) -> scale_tril, how the caller factors a
        mixture (its ridge); eps_rel, eps_abs: the ridge of `partial_em`'s own factors;
        baseline_em: judge the move against the current mixture after the same
        `partial_em` steps on the same components, not against the mixture as it is. Online
        EM needs it: its state is an EMA that lags the encoder's embeddings, so any refit on
        the batch beat it and the move was kept at most steps (measured on `k_branch`:
        held-out NLL 1.85 against 0.31 with the baseline refitted).

    Returns:
      (weights [K], means [K, D], covs [K, D, D], scale_tril [K, D, D], changed [K] bool,
      gain []: the mean log-likelihood of the odd rows under the move minus under the
      current mixture; the caller keeps the move where gain > 0).

    Example:
      >>> z = jnp.concatenate([jnp.full((8, 1), -3.0), jnp.full((8, 1), 3.0)]) + 0.1 * jax.random.normal(jax.random.key(1), (16, 1))
      >>> w, mu, cov = jnp.array([0.98, 0.02]), jnp.array([[0.0], [0.2]]), jnp.array([[[9.0]], [[1.0]]])
      >>> L = jnp.sqrt(cov)
      >>> joint = jnp.log(w) + jax.scipy.stats.norm.logpdf(z, mu[:, 0], L[:, 0, 0])
      >>> move = jax.jit(lambda *args: gje_jax.remedies.reseed.held_out_merge_split(
      ...     *args, factor=lambda w, m, c: jnp.linalg.cholesky(c + 1e-4)))
      >>> out = move(jax.random.key(0), z, joint, w, mu, cov, L)
      >>> sorted(np.asarray(out[1][:, 0], float).round(0).tolist()), bool(out[5] > 0)    # one component per cluster
      ([-3.0, 3.0], True)
    """
    fit, held = z[0::2], z[1::2]
    new_w, new_mu, new_cov, changed = merge_split(key, fit, log_joint[0::2], weights, means, covs)
    new_w, new_mu, new_cov = partial_em(fit, new_w, new_mu, new_cov, changed, eps_rel=eps_rel, eps_abs=eps_abs)
    new_tril = factor(new_w, new_mu, new_cov)
    if baseline_em:
        weights, means, covs = partial_em(fit, weights, means, covs, changed, eps_rel=eps_rel, eps_abs=eps_abs)
        scale_tril = factor(weights, means, covs)
    gain = batch_log_likelihood(held, new_w, new_mu, new_tril) - batch_log_likelihood(held, weights, means, scale_tril)
    return new_w, new_mu, new_cov, new_tril, changed, gain
