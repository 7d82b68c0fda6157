"""The method registry: config.method.name -> (parameter/state init, loss, state update).

A method sees the embeddings of both views and owns two pytrees in the TrainState:
`params['method']` (trained by the optimiser: GJE's `param` density, GMJE prototypes,
the predictor head) and `method_state` (never differentiated: EMA statistics, the EMA
target network). Everything is computed on the *global* batch inside one jit, so one
device and many devices give the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gje_jax import em, gaussian, gng, linalg, losses, smc
from gje_jax.mixture import ConditionalMixture, GaussianMixture
from gje_jax.models import MDNHead, Predictor


class Embeddings(NamedTuple):
    """a, b: [N, E] online embeddings of the context and target views;
    a_target, b_target: [N, E] EMA-target-network embeddings (or None).

    Example:
      >>> from gje_jax.train.methods import Embeddings
      >>> emb = Embeddings(jnp.zeros((4, 8)), jnp.ones((4, 8)))   # the two views' embeddings
      >>> emb.a.shape, emb.a_target is None
      ((4, 8), True)
    """

    a: jax.Array
    b: jax.Array
    a_target: jax.Array | None = None
    b_target: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    """A training objective and the state it carries.

    init(key, d_c, d_t) -> (method params, method state), for embeddings of the context
      and target views of widths d_c and d_t (equal in the shared-encoder setting);
    loss(params, state, emb) -> (loss, metrics);
    update(state, emb, online_params, key) -> (state, metrics), after the optimiser step,
      on stop-gradient embeddings of the global batch;
    density(params, state) -> the GaussianMixture over [c ; t] the method holds, or None
      (the `batch` estimator, the deterministic baselines: fit one afterwards);
    conditional(params, state, c) -> ConditionalMixture p(t | c) for c [N, d_c], or None
      (then use density(...).condition(c)).

    Example:
      >>> from gje_jax.train.methods import Embeddings, get_method
      >>> from experiments.configs.common import base_config
      >>> m = base_config().method; m.name = "gmje"; m.num_components = 3
      >>> method = get_method(m)                                   # a Method: init, loss, update, density
      >>> params, state = method.init(jax.random.key(0), 2, 2)
      >>> emb = Embeddings(jnp.zeros((16, 2)), jnp.ones((16, 2)))
      >>> loss, metrics = method.loss(params, state, emb)
      >>> loss.shape, method.density(params, state).means.shape
      ((), (3, 4))
    """

    name: str
    init: Callable[[jax.Array, int, int], tuple[Any, Any]]
    loss: Callable[[Any, Any, Embeddings], tuple[jax.Array, dict]]
    update: Callable[[Any, Embeddings, Any, jax.Array], tuple[Any, dict]] = lambda state, emb, online, key: (state, {})
    target_network: bool = False
    density: Callable[[Any, Any], GaussianMixture | None] = lambda params, state: None
    conditional: Callable[[Any, Any, jax.Array], ConditionalMixture] | None = None


def _joint(emb: Embeddings) -> jax.Array:
    return jnp.concatenate([emb.a, emb.b], axis=-1)


def _gje(m) -> Method:
    def init(key, dc, dt):
        d = dc + dt
        if m.estimator == "param":
            return {"mean": jnp.zeros((d,)), "raw": linalg.unconstrained_from_scale_tril(jnp.eye(d), m.floor)}, {}
        if m.estimator == "ema":
            return {}, {"stats": gaussian.GaussianStats.zeros(d)}
        return {}, {}

    def density(params, state):
        if m.estimator == "param":
            return GaussianMixture(
                jnp.zeros((1,)),
                params["mean"][None],
                linalg.scale_tril_from_unconstrained(params["raw"], m.floor)[None],
            )
        if m.estimator == "ema":
            return state["stats"].to_gaussian(m.eps_rel, m.eps_abs)
        return None

    def loss(params, state, emb):
        return losses.gje_loss(
            emb.a,
            emb.b,
            estimator=m.estimator,
            density=state["stats"] if m.estimator == "ema" else density(params, state),
            lambda_geo=m.lambda_geo,
            eps_rel=m.eps_rel,
            eps_abs=m.eps_abs,
        )

    def update(state, emb, online, key):
        if m.estimator != "ema":
            return state, {}
        return {"stats": state["stats"].update(_joint(emb), m.momentum)}, {}

    return Method("gje", init, loss, update, density=density)


def _mixture_loss(m, emb: Embeddings, mixture: GaussianMixture, lambda_bal: float):
    return losses.gmje_loss(
        emb.a,
        emb.b,
        mixture,
        objective=m.objective,
        lambda_geo=m.lambda_geo,
        lambda_bal=lambda_bal,
        eps_rel=m.eps_rel,
        eps_abs=m.eps_abs,
    )


def _gmje(m) -> Method:
    def init(key, dc, dt):
        d, k = dc + dt, m.num_components
        params = {
            "logits": jnp.zeros((k,)),
            "means": jax.random.normal(key, (k, d)),
            "raw": jnp.broadcast_to(linalg.unconstrained_from_scale_tril(jnp.eye(d), m.floor), (k, d, d)),
        }
        return params, {}

    def density(params, state):
        return GaussianMixture.from_unconstrained(params["logits"], params["means"], params["raw"], m.floor)

    return Method("gmje", init, lambda p, s, emb: _mixture_loss(m, emb, density(p, s), m.lambda_bal), density=density)


def _gmje_em(m) -> Method:
    """Prototypes by online EM: stop-gradient state, the encoder alone is trained."""

    def init(key, dc, dt):
        return {}, {"em": em.EMState.create(key, m.num_components, dc + dt)}

    def update(state, emb, online, key):
        new, metrics = em.update(
            state["em"],
            _joint(emb),
            key,
            momentum=m.em_momentum,
            dead_threshold=m.dead_threshold or None,
            eps_rel=m.eps_rel,
            eps_abs=m.eps_abs,
            pooled_eps_rel=m.pooled_eps_rel,
            pooled_shape=m.pooled_shape,
        )
        return {"em": new}, metrics

    density = lambda params, state: state["em"].mixture()
    return Method("gmje_em", init, lambda p, s, emb: _mixture_loss(m, emb, density(p, s), 0.0), update, density=density)


def _gng_config(m) -> gng.GNGConfig:
    return gng.GNGConfig(
        eps_b=m.gng_eps_b,
        eps_n=m.gng_eps_n,
        max_age=m.gng_max_age,
        insert_every=m.gng_insert_every,
        alpha=m.gng_alpha,
        decay=m.gng_decay,
        momentum=m.em_momentum,
        covariance=m.gng_covariance,
        floor=m.floor**2,
    )


def _gmje_gng(m) -> Method:
    """Growing Neural Gas over joint embeddings; its graph is the mixture."""
    cfg = _gng_config(m)

    def init(key, dc, dt):
        return {}, {"gng": gng.GNGState.create(m.gng_capacity, dc + dt, covariance=cfg.covariance)}

    def update(state, emb, online, key):
        new, metrics = gng.update(state["gng"], _joint(emb), cfg)
        return {"gng": new}, metrics

    density = lambda params, state: gng.mixture(state["gng"], cfg.floor, m.pooled_eps_rel, m.pooled_shape)
    return Method(
        "gmje_gng", init, lambda p, s, emb: _mixture_loss(m, emb, density(p, s), 0.0), update, density=density
    )


def _mdn_head(m, dt: int) -> MDNHead:
    return MDNHead(
        num_components=m.num_components,
        out_dim=dt,
        hidden=tuple(m.mdn_hidden),
        covariance=m.mdn_covariance,
        floor=m.floor,
    )


def _mean_variance(t: jax.Array) -> jax.Array:
    """Average per-dimension variance of a batch [N, d] (stop-gradient) -> []."""
    return jnp.mean(jnp.var(jax.lax.stop_gradient(t), axis=0))


def _gmje_mdn(m) -> Method:
    """A conditional mixture density network p(t | c) on the context embedding.

    With pooled_eps_rel > 0 every predicted component is widened by pooled_eps_rel times
    the targets' average variance (an EMA over past batches, in the method state): without
    that floor the head can win without bound by packing the targets into K tight clusters.
    """
    rel = m.pooled_eps_rel

    def init(key, dc, dt):
        params = {"mdn": _mdn_head(m, dt).init(key, jnp.zeros((1, dc)))["params"]}
        return params, ({"target_var": jnp.zeros(())} if rel else {})

    def head(params, c):
        dt = params["mdn"]["means"]["kernel"].shape[-1] // m.num_components
        return _mdn_head(m, dt).apply({"params": params["mdn"]}, c)

    def conditional(params, state, c):
        cond = head(params, c)
        return cond.add_variance(rel * state["target_var"]) if rel else cond

    def loss(params, state, emb):
        cond = head(params, emb.a)
        if rel:
            # Past batches' variance; the very first step (no history yet) uses its own.
            var = jnp.where(state["target_var"] > 0, state["target_var"], _mean_variance(emb.b))
            cond = cond.add_variance(rel * var)
        nll = -jnp.mean(cond.log_prob(emb.b))
        # A conditional NLL pairs with the target-block geometry term (scale invariance).
        geo = (
            losses.target_geometry_term(emb.b, eps_rel=m.eps_rel, eps_abs=m.eps_abs) if m.lambda_geo else jnp.zeros(())
        )
        loss = nll - m.lambda_geo * geo
        return loss, {"loss": loss, "nll": nll, "geometry": geo}

    def update(state, emb, online, key):
        if not rel:
            return state, {}
        old, var = state["target_var"], _mean_variance(emb.b)
        return {"target_var": jnp.where(old > 0, m.momentum * old + (1 - m.momentum) * var, var)}, {}

    return Method("gmje_mdn", init, loss, update, conditional=conditional)


def _bank_kernel(m, state) -> jax.Array:
    """Cholesky factor of the bank's kernel covariance H [D, D]."""
    bank: smc.ParticleBank = state["bank"]
    d = bank.dim
    if m.bank_kernel == "isotropic":
        return m.bank_bandwidth * jnp.eye(d)
    return smc.kernel_scale_tril(state["stats"].cov, bank.capacity, eps_rel=m.eps_rel, eps_abs=m.eps_abs)


def _gmje_smc(m) -> Method:
    """The batch scored against an SMC particle bank of past joint embeddings."""

    def init(key, dc, dt):
        d = dc + dt
        return {}, {"bank": smc.ParticleBank.empty(m.bank_size, d), "stats": gaussian.GaussianStats.zeros(d)}

    def loss(params, state, emb):
        bank: smc.ParticleBank = jax.lax.stop_gradient(state["bank"])
        chol = jax.lax.stop_gradient(_bank_kernel(m, state))
        have = bank.size() > 0
        # An empty bank (the first step) scores nothing: uniform placeholder weights keep
        # every intermediate finite, and the mask removes the term.
        lw = jnp.where(have, bank.log_weights, 0.0)
        zero = jnp.zeros((), emb.a.dtype)
        nll = contrastive = zero
        if m.bank_loss in ("nll", "both"):
            lp = smc.kernel_conditional_log_prob(emb.a, emb.b, bank.particles, lw, chol)
            nll = jnp.where(have, -jnp.mean(lp), 0.0)
        if m.bank_loss in ("contrastive", "both"):
            dc = emb.a.shape[1]
            # Bank weights as priors, rescaled so a uniform bank matches the batch candidates.
            prior = jnp.where(bank.filled, lw - jax.nn.logsumexp(lw) + jnp.log(jnp.maximum(bank.size(), 1)), -jnp.inf)
            contrastive, _ = losses.gmje_contrastive(
                emb.a, emb.b, tau=m.tau, extra_targets=bank.particles[:, dc:], extra_log_weights=prior
            )
        # The normalised contrastive term is scale-invariant on its own; the kernel NLL is a
        # conditional NLL, paired with the target-block geometry term.
        geo_weight = m.lambda_geo if m.bank_loss in ("nll", "both") else 0.0
        geo = losses.target_geometry_term(emb.b, eps_rel=m.eps_rel, eps_abs=m.eps_abs) if geo_weight else zero
        loss = nll + contrastive - geo_weight * geo
        return loss, {"loss": loss, "nll": nll, "contrastive": contrastive, "geometry": geo}

    def update(state, emb, online, key):
        z = _joint(emb)
        stats = state["stats"].update(z, m.momentum)
        new_state = {"bank": state["bank"], "stats": stats}
        bank, metrics = smc.update(
            state["bank"],
            z,
            key,
            _bank_kernel(m, new_state),
            scheme=m.resampling,
            ess_threshold=m.ess_threshold,
            age_penalty=m.age_penalty,
            rejuvenation=m.rejuvenation,
            tempering=m.bank_tempering,
        )
        return {"bank": bank, "stats": stats}, metrics

    def density(params, state):
        # The kernel mixture as a GaussianMixture with one shared factor (M components).
        # This broadcasts the factor to [M, D, D]: meant for inspection of small banks
        # (the loss never builds it; it uses smc.kernel_conditional_log_prob).
        bank = state["bank"]
        chol = _bank_kernel(m, state)
        return GaussianMixture(bank.log_weights, bank.particles, jnp.broadcast_to(chol, (bank.capacity,) + chol.shape))

    return Method("gmje_smc", init, loss, update, density=density)


def _simclr(m) -> Method:
    return Method(
        "simclr",
        lambda key, dc, dt: ({}, {}),
        lambda p, s, emb: losses.infonce(emb.a, emb.b, tau=m.tau, symmetric=True),
    )


def _vicreg(m) -> Method:
    return Method(
        "vicreg",
        lambda key, dc, dt: ({}, {}),
        lambda p, s, emb: losses.vicreg_loss(
            emb.a, emb.b, sim_weight=m.vicreg_sim, var_weight=m.vicreg_var, cov_weight=m.vicreg_cov
        ),
    )


def _predictor(m) -> Method:
    """A predictor head on the online embeddings, regressed on the EMA target network's.

    With predictor_norm = 'bn' (BYOL's head) the head always normalises with the current
    batch's statistics: it only runs in training, so running averages would never be read,
    and flax creates (then the loss discards) its batch_stats on each call: no state."""

    def head(e):
        return Predictor(hidden=tuple(m.predictor_hidden), out_dim=e, norm=m.predictor_norm)

    def init(key, e, _):
        return {"predictor": head(e).init(key, jnp.zeros((1, e)), train=False)["params"]}, {}

    def loss(params, state, emb):
        e = emb.a.shape[1]

        def pred(x):
            return head(e).apply({"params": params["predictor"]}, x, train=True, mutable=["batch_stats"])[0]

        la, ma = losses.predictor_loss(pred(emb.a), emb.b_target, kind=m.predictor_loss)
        lb, _ = losses.predictor_loss(pred(emb.b), emb.a_target, kind=m.predictor_loss)
        loss = 0.5 * (la + lb)
        return loss, {"loss": loss}

    return Method("predictor", init, loss, target_network=True)


# Explicit registry (a typo fails with the valid names; see `get_method`).
METHODS: dict[str, Callable[[Any], Method]] = {
    "gje": _gje,
    "gmje": _gmje,
    "gmje_em": _gmje_em,
    "gmje_mdn": _gmje_mdn,
    "gmje_gng": _gmje_gng,
    "gmje_smc": _gmje_smc,
    "simclr": _simclr,
    "vicreg": _vicreg,
    "predictor": _predictor,
}


def get_method(method_config) -> Method:
    """The registered Method for config.method (its `name` selects it from METHODS).

    Example: `get_method(config.method).loss(params, state, embeddings)`.

    Example:
      >>> from gje_jax.train.methods import get_method
      >>> from experiments.configs.common import base_config
      >>> m = base_config().method; m.name = "simclr"
      >>> get_method(m).name
      'simclr'
    """
    name = method_config.name
    if name not in METHODS:
        raise ValueError(f"config.method.name={name!r} is unknown; valid methods: {sorted(METHODS)}.")
    return METHODS[name](method_config)


def ema_update(target, online, momentum: float):
    """target <- momentum * target + (1 - momentum) * online, leaf by leaf.

    Example:
      >>> from gje_jax.train.methods import ema_update
      >>> np.asarray(ema_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, momentum=0.9)["w"], float).round(4).tolist()   # 0.9 * 0 + 0.1 * 1
      [0.1, 0.1]
    """
    return optax.incremental_update(online, target, 1.0 - momentum)
