"""GMJE with an SMC memory bank: the batch is scored against a weighted bank of past joint
embeddings (a kernel mixture), which is reweighted, resampled and refreshed every step.

Which density is trained and which one is handed out: the same kernel mixture (the bank's
particles and weights with the kernel of bank_kernel). Its weights are importance weights
for the current embeddings' density (bank_reweight='ratio', see `smc.reweight`); the
kernel that reweights them is the shared one for bank_kernel='local' too (a density
estimate, not the density handed out)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gje_jax import gaussian, losses
from gje_jax.methods.base import Method
from gje_jax.methods.shared import MOMENTUM, geometry_settings, target_geometry
from gje_jax.mixture import GaussianMixture
from gje_jax.remedies import smc
from gje_jax.remedies.resampling import SCHEMES
from gje_jax.settings import choice, fraction, integer, nonnegative, positive

TITLE = "GMJE SMC bank"
_NLL = ("nll", "both")
# Kernels whose reweighting factor is the EMA covariance of the batches.
_EMA_KERNELS = ("shared", "local")
SETTINGS = {
    "bank_size": integer(4096, "particles in the bank (at least one batch)"),
    "ess_threshold": fraction(0.5, "resample when ESS < ess_threshold x bank_size", low_open=True, high_open=False),
    "resampling": choice("systematic", "resampling scheme", tuple(sorted(SCHEMES))),
    "rejuvenation": nonnegative(0.0, "jitter of resampled particles, in kernel standard deviations"),
    "age_penalty": nonnegative(0.0, "log-weight lost per step of age"),
    "bank_reweight": choice(
        "ratio",
        "ratio: a particle's weight follows the embeddings' density now over that at its insertion "
        "(importance weights that track a moving density) | density: every step multiplies it by the "
        "density (the bank sharpens onto the modes, w ~ p^T)",
        ("ratio", "density"),
    ),
    "bank_ess_target": fraction(
        0.5,
        "adaptive tempering: reweight by KDE^delta with delta the largest in [0, 1] that keeps the bank's "
        "ESS at least bank_ess_target x its size (bisection); 0 = the fixed bank_tempering",
    ),
    "bank_tempering": fraction(
        1.0, "reweight by KDE^bank_tempering (tempered SMC; 1 = plain)", high_open=False
    ).only_when(lambda s: s.bank_ess_target == 0, "bank_ess_target=0"),
    "bank_kernel": choice(
        "shared",
        "kernel: shared (EMA covariance of the batches x Silverman's factor at the bank's capacity) | bank "
        "(the bank's weighted covariance x Silverman's factor at its ESS; on the trap task the embeddings "
        "shrank 9-13x with it) | isotropic (h I) | predictive (diag(h_c^2 I, h_t^2 I), the widths under "
        "which the bank best predicted the last batch's targets from its contexts, see smc.fit_bandwidths) | "
        "local (h_m^2 I per particle, h_m from the distance to its bank_local_k-th nearest particle; "
        "reweighting keeps the shared kernel)",
        ("shared", "bank", "isotropic", "predictive", "local"),
    ),
    "bank_local_k": integer(10, "the local kernel's neighbour rank").only_when(
        lambda s: s.bank_kernel == "local", "bank_kernel='local'"
    ),
    "bank_local_scale": positive(
        0.3, "the local kernel's draws land about bank_local_scale x the k-th neighbour's distance away"
    ).only_when(lambda s: s.bank_kernel == "local", "bank_kernel='local'"),
    "bank_bandwidth": positive(0.1, "h of the isotropic kernel").only_when(
        lambda s: s.bank_kernel == "isotropic", "bank_kernel='isotropic'"
    ),
    "bank_loss": choice("nll", "the batch's score: nll | contrastive | both", ("nll", "contrastive", "both")),
    "tau": positive(0.1, "temperature of the contrastive score").only_when(
        lambda s: s.bank_loss != "nll", "bank_loss='contrastive' or 'both'"
    ),
    **geometry_settings(
        lambda_geo=geometry_settings()["lambda_geo"].only_when(
            lambda s: s.bank_loss in _NLL, "bank_loss='nll' or 'both'"
        )
    ),
    "momentum": MOMENTUM.only_when(
        lambda s: s.bank_kernel in _EMA_KERNELS, "bank_kernel='shared' or 'local' (the EMA covariance)"
    ),
}
SMOKE = {"bank_size": 256}
IDENTITY = ("bank_size",)


def check(s, config) -> None:
    """Refuses a bank smaller than one batch (each step inserts the whole batch).

    Example:
      >>> from gje_jax import methods
      >>> from gje_jax.methods.gmje_smc import check
      >>> from gje_jax.train.configs import smoke_config
      >>> try:
      ...     check(methods.default_settings("gmje_smc", bank_size=8), smoke_config("gmje_smc"))
      ... except ValueError as e:
      ...     print(str(e).split(":")[0])
      config.method.bank_size=8 is smaller than config.batch_size=64
    """
    if s.bank_size < config.batch_size:
        raise ValueError(
            f"config.method.bank_size={s.bank_size} is smaller than config.batch_size={config.batch_size}: "
            "the SMC bank must hold at least one batch (each step inserts the whole batch)."
        )


def kernel_scale_tril(s, state) -> jax.Array:
    """Cholesky factor of the bank's kernel covariance H [D, D] (for bank_kernel='local' the
    shared kernel that reweighting uses; its density's kernels are `centre_scales`).

    Example:
      >>> from gje_jax import methods
      >>> from gje_jax.methods.gmje_smc import kernel_scale_tril
      >>> s = methods.default_settings("gmje_smc", bank_size=8, bank_kernel="isotropic")
      >>> _, state = methods.build(s).init(jax.random.key(0), 1, 1)
      >>> np.asarray(kernel_scale_tril(s, state), float).round(3).tolist()   # h I
      [[0.1, 0.0], [0.0, 0.1]]
    """
    bank: smc.ParticleBank = state["bank"]
    if s.bank_kernel == "isotropic":
        return s.bank_bandwidth * jnp.eye(bank.dim)
    if s.bank_kernel == "predictive":
        return jnp.diag(state["bandwidth"])
    if s.bank_kernel == "bank":
        return smc.bank_kernel_scale_tril(bank, eps_rel=s.eps_rel, eps_abs=s.eps_abs)
    return smc.kernel_scale_tril(state["stats"].cov, bank.capacity, eps_rel=s.eps_rel, eps_abs=s.eps_abs)


def density_kernel(s, state) -> tuple[jax.Array, jax.Array | None]:
    """The kernels of the bank's density: (shared factor L [D, D], per-particle factors
    s [M] or None); component m is N(P_m, s_m^2 L L^T).

    Example:
      >>> from gje_jax import methods
      >>> from gje_jax.methods.gmje_smc import density_kernel
      >>> s = methods.default_settings("gmje_smc", bank_size=8, bank_kernel="local", bank_local_k=1)
      >>> _, state = methods.build(s).init(jax.random.key(0), 1, 1)
      >>> state["bank"] = gje_jax.remedies.smc.insert(state["bank"], jnp.array([[0.0, 0.0], [3.0, 4.0]]))
      >>> L, scales = density_kernel(s, state)
      >>> L.tolist(), round(float(scales[0]), 4)                   # 0.3 x 5 / sqrt(2)
      ([[1.0, 0.0], [0.0, 1.0]], 1.0607)
    """
    if s.bank_kernel == "local":
        bank: smc.ParticleBank = state["bank"]
        scales = smc.local_bandwidths(bank, s.bank_local_k, s.bank_local_scale)
        return jnp.eye(bank.dim, dtype=bank.particles.dtype), scales
    return kernel_scale_tril(s, state), None


def bank_loss(s, state, emb):
    """The batch scored against the (stop-gradient) bank -> (loss, metrics).

    'nll': -mean log p(t | c) under the bank's kernel mixture, with the target geometry
    term; 'contrastive': GMJE's contrastive score with the bank's targets as extra
    candidates weighted by the bank; 'both' adds them. An empty bank scores nothing.

    Example:
      >>> from gje_jax import methods
      >>> from gje_jax.methods.gmje_smc import bank_loss
      >>> s = methods.default_settings("gmje_smc", bank_size=8)
      >>> _, state = methods.build(s).init(jax.random.key(0), 1, 1)
      >>> loss, metrics = bank_loss(s, state, methods.Embeddings(jnp.ones((4, 1)), jnp.ones((4, 1))))
      >>> float(metrics["nll"])                                     # the first step: an empty bank
      0.0
    """
    bank: smc.ParticleBank = jax.lax.stop_gradient(state["bank"])
    scale_tril, scales = jax.lax.stop_gradient(density_kernel(s, state))
    have = bank.size() > 0
    # An empty bank (the first step) scores nothing: uniform placeholder weights keep every
    # intermediate finite, and the mask removes the term.
    lw = jnp.where(have, bank.log_weights, 0.0)
    zero = jnp.zeros((), emb.context.dtype)
    nll = contrastive = zero
    if s.bank_loss in _NLL:
        lp = smc.kernel_conditional_log_prob(
            emb.context, emb.target, bank.particles, lw, scale_tril, centre_scales=scales
        )
        nll = jnp.where(have, -jnp.mean(lp), 0.0)
    if s.bank_loss in ("contrastive", "both"):
        dc = emb.context.shape[1]
        # Bank weights as priors, rescaled so a uniform bank matches the batch candidates.
        prior = jnp.where(bank.filled, lw - jax.nn.logsumexp(lw) + jnp.log(jnp.maximum(bank.size(), 1)), -jnp.inf)
        contrastive, _ = losses.gmje_contrastive(
            emb.context, emb.target, tau=s.tau, extra_targets=bank.particles[:, dc:], extra_log_weights=prior
        )
    # The normalised contrastive term is scale-invariant on its own; the kernel NLL is a
    # conditional NLL, paired with the target-block geometry term.
    geo_weight = s.lambda_geo if s.bank_loss in _NLL else 0.0
    geo = target_geometry(s, emb.target, geo_weight)
    loss = nll + contrastive - geo_weight * geo
    return loss, {"loss": loss, "nll": nll, "contrastive": contrastive, "geometry": geo}


def build(s) -> Method:
    """The SMC-bank GMJE Method for settings s (see SETTINGS).

    Example:
      >>> from gje_jax import methods
      >>> method = methods.build(methods.default_settings("gmje_smc", bank_size=8))
      >>> params, state = method.init(jax.random.key(0), 1, 1)
      >>> int(state["bank"].size()), method.density(params, state).num_components
      (0, 8)
    """

    def init(key, dc, dt):
        d = dc + dt
        state = {"bank": smc.ParticleBank.empty(s.bank_size, d), "stats": gaussian.GaussianStats.zeros(d)}
        if s.bank_kernel == "predictive":
            # Each coordinate's width, h_c on the context's and h_t on the target's: set by
            # the first update (from the first batch). Only this kernel carries it, so the
            # other kernels' checkpoints keep their structure.
            state["bandwidth"] = jnp.ones((d,), jnp.float32)
        return {}, state

    def update(state, emb, online, key):
        z = emb.joint()
        # The EMA statistics are read by the 'shared' kernel only; kept in every state so
        # the state's structure does not depend on the kernel.
        stats = state["stats"].update(z, s.momentum) if s.bank_kernel == "shared" else state["stats"]
        new = {"bank": state["bank"], "stats": stats}
        dc = emb.context.shape[1]

        if s.bank_kernel == "predictive":
            # The widths under which the bank predicts this batch (which it has not seen)
            # best; the first batch, with an empty bank, by leave-one-out on itself. They
            # weigh this step's particles and score the next step's batch in the loss.
            previous = state["bandwidth"][jnp.array([0, -1])]

            def on_the_batch_itself():
                first = smc.insert(smc.ParticleBank.empty(z.shape[0], z.shape[1], z.dtype), z)
                return smc.fit_bandwidths(first, dc, previous)[0]

            hc_ht = jax.lax.cond(
                state["bank"].size() > 0,
                lambda: smc.fit_bandwidths(state["bank"], dc, previous, z)[0],
                on_the_batch_itself,
            )
            new["bandwidth"] = jnp.repeat(hc_ht, jnp.array([dc, z.shape[1] - dc]), total_repeat_length=z.shape[1])
            metrics_extra = {"bank_bandwidth_c": hc_ht[0], "bank_bandwidth_t": hc_ht[1]}
        else:
            metrics_extra = {}
        bank, metrics = smc.update(
            state["bank"],
            z,
            key,
            kernel_scale_tril(s, new),
            scheme=s.resampling,
            ess_threshold=s.ess_threshold,
            age_penalty=s.age_penalty,
            rejuvenation=s.rejuvenation,
            tempering=s.bank_tempering,
            ess_target=s.bank_ess_target,
            incremental=s.bank_reweight == "ratio",
        )
        new["bank"] = bank
        return new, {**metrics, **metrics_extra}

    def density(params, state):
        # The kernel mixture as a GaussianMixture (M components). This builds [M, D, D]
        # factors: meant for inspection of small banks (the loss never builds it;
        # `sampler` draws without it).
        bank = state["bank"]
        scale_tril, scales = density_kernel(s, state)
        factors = jnp.broadcast_to(scale_tril, (bank.capacity,) + scale_tril.shape)
        if scales is not None:
            factors = scales[:, None, None] * factors
        return GaussianMixture(bank.log_weights, bank.particles, factors)

    def sampler(params, state, key, n, e):
        # Draw particles, add s_m L eps (no per-particle [D, D] factors).
        bank = state["bank"]
        scale_tril, scales = density_kernel(s, state)
        k1, k2 = jax.random.split(key)
        idx = jax.random.categorical(k1, bank.log_weights, shape=(n,))
        noise = jax.random.normal(k2, (n, e)) @ scale_tril[:e, :e].T
        if scales is not None:
            noise = scales[idx, None] * noise
        return bank.particles[idx, :e] + noise

    return Method("gmje_smc", init, lambda p, st, emb: bank_loss(s, st, emb), update, density=density, sampler=sampler)
