"""GMJE-GNG: Growing Neural Gas (Fritzke 1995) over joint embeddings, with static
capacity and an active mask, and the Gaussian mixture its graph defines (METHOD
section 6).

`update` runs one `lax.scan` over the inputs of a batch, applying every step of
Fritzke's algorithm per input; afterwards (batched, outside the scan) it refreshes the
per-node statistics behind the mixture view: EMA win shares and EMA residual second
moments. All shapes are static (capacity K_max); inactive nodes are masked.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from gje_jax import _validation as v
from gje_jax import linalg
from gje_jax.gaussian import check_pooled_ridge, pooled_ridge, regularize
from gje_jax.mixture import GaussianMixture

MEANS = ("cells", "nodes")


@dataclasses.dataclass(frozen=True)
class GNGConfig:
    """Fritzke's constants (defaults from the 1995 paper) and the mixture-view settings.

    eps_b, eps_n: winner and neighbour step sizes; max_age: edge lifetime a_max;
    insert_every: lambda (inputs between insertions); alpha: error factor at insertion;
    decay: global error decay d per input; max_idle: a node that has not won for this
    many inputs is removed with its edges (default max_age * insert_every). This is one
    addition to Fritzke's steps: two nodes left between clusters, joined only to each
    other, never win, so their edge never ages and plain GNG keeps them forever;
    momentum: EMA of the win shares and residual moments; covariance: 'node' (per-node EMA of residual second moments) or
    'isotropic' (one shared variance); floor: variance floor of the mixture view;
    means: the mixture's component means: 'cells' (per node, the EMA of the mean of the
    inputs it wins) or 'nodes' (the node positions themselves, as before December 2026).
    Node positions are biased estimates of their cells' means: every input pulls the
    winner's graph neighbours towards it (eps_n), across the gap between two branches when
    an edge spans it, and eps_b = 0.2 makes a position an average of its last few inputs.

    Example:
      >>> cfg = gje_jax.remedies.gng.GNGConfig(insert_every=50)
      >>> cfg.eps_b, cfg.insert_every
      (0.2, 50)
    """

    eps_b: float = 0.2
    eps_n: float = 0.006
    max_age: int = 50
    insert_every: int = 100
    alpha: float = 0.5
    decay: float = 0.995
    momentum: float = 0.9
    covariance: str = "node"
    floor: float = 1e-4
    max_idle: int | None = None
    means: str = "cells"

    @property
    def idle_limit(self) -> int:
        """Inputs a node may go without winning before it is removed; default
        max_age * insert_every."""
        return self.max_age * self.insert_every if self.max_idle is None else self.max_idle

    def __post_init__(self):
        if self.covariance not in ("node", "isotropic"):
            raise ValueError(f"GNG covariance must be 'node' or 'isotropic', got {self.covariance!r}.")
        if self.means not in MEANS:
            raise ValueError(f"GNG means must be one of {list(MEANS)}, got {self.means!r}.")
        for name in ("eps_b", "eps_n", "alpha", "decay"):
            val = getattr(self, name)
            if not 0.0 <= val <= 1.0:
                raise ValueError(f"GNG {name} must be in [0, 1], got {val!r}.")
        if self.max_age < 1 or self.insert_every < 1:
            raise ValueError(f"GNG max_age and insert_every must be >= 1, got {self.max_age}, {self.insert_every}.")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"GNG momentum must be in [0, 1), got {self.momentum!r}.")


@flax.struct.dataclass
class GNGState:
    """nodes [K, D]; active [K] bool; edges [K, K] bool (symmetric); ages [K, K] int32;
    error [K] accumulated squared error; idle [K] int32 inputs since the node last won; wins [K] EMA win shares; covs [K, D, D] EMA
    residual second moments (or [1, D, D] shared isotropic); means [K, D] the mixture's
    component means (see GNGConfig.means); inputs_seen [] int32;
    initialized [] bool.

    Example:
      >>> state = gje_jax.remedies.gng.GNGState.create(capacity=10, dim=2)
      >>> state.capacity, int(state.num_active())
      (10, 0)
    """

    nodes: jax.Array
    active: jax.Array
    edges: jax.Array
    ages: jax.Array
    error: jax.Array
    idle: jax.Array
    wins: jax.Array
    covs: jax.Array
    means: jax.Array
    inputs_seen: jax.Array
    initialized: jax.Array

    @classmethod
    def create(cls, capacity: int, dim: int, *, covariance: str = "node", dtype=jnp.float32) -> GNGState:
        """An uninitialised graph; the first `update` places two nodes at its first inputs."""
        if capacity < 2:
            raise ValueError(f"GNG needs capacity >= 2 nodes, got {capacity}.")
        k = capacity
        ncov = k if covariance == "node" else 1
        return cls(
            nodes=jnp.zeros((k, dim), dtype),
            active=jnp.zeros((k,), bool),
            edges=jnp.zeros((k, k), bool),
            ages=jnp.zeros((k, k), jnp.int32),
            error=jnp.zeros((k,), dtype),
            idle=jnp.zeros((k,), jnp.int32),
            wins=jnp.zeros((k,), dtype),
            covs=jnp.broadcast_to(jnp.eye(dim, dtype=dtype), (ncov, dim, dim)),
            means=jnp.zeros((k, dim), dtype),
            inputs_seen=jnp.zeros((), jnp.int32),
            initialized=jnp.zeros((), bool),
        )

    @property
    def capacity(self) -> int:
        return self.nodes.shape[0]

    def num_active(self) -> jax.Array:
        return jnp.sum(self.active).astype(jnp.int32)

    def num_edges(self) -> jax.Array:
        return (jnp.sum(self.edges) // 2).astype(jnp.int32)


def _sq_dists(nodes: jax.Array, x: jax.Array) -> jax.Array:
    diff = nodes - x
    return jnp.sum(diff * diff, axis=-1)


def _step(cfg: GNGConfig, state: GNGState, x: jax.Array) -> tuple[GNGState, tuple[jax.Array, jax.Array]]:
    """Fritzke's algorithm for one input x [D]. Returns (state, (winner, squared error))."""
    k = state.capacity
    big = jnp.finfo(x.dtype).max
    d2 = jnp.where(state.active, _sq_dists(state.nodes, x), big)
    _, (s1, s2) = jax.lax.top_k(-d2, 2)
    # 2. age the edges of s1; 3. accumulate its error.
    row = state.edges[s1]
    ages = state.ages.at[s1].add(row.astype(jnp.int32))
    ages = ages.at[:, s1].add(row.astype(jnp.int32))
    error = state.error.at[s1].add(d2[s1])
    # 4. move s1 and its topological neighbours towards x.
    step = jnp.where(row, cfg.eps_n, 0.0).at[s1].set(cfg.eps_b)
    nodes = state.nodes + step[:, None] * (x - state.nodes)
    # 5. refresh (or create) the edge s1-s2.
    edges = state.edges.at[s1, s2].set(True).at[s2, s1].set(True)
    ages = ages.at[s1, s2].set(0).at[s2, s1].set(0)
    # 6. drop old edges (and every edge of a node idle too long), then nodes left
    # without edges (keeping at least two).
    idle = jnp.where(state.active, state.idle + 1, 0).at[s1].set(0)
    stale = idle > cfg.idle_limit
    edges = edges & (ages <= cfg.max_age) & ~stale[:, None] & ~stale[None, :]
    ages = jnp.where(edges, ages, 0)
    isolated = state.active & ~jnp.any(edges, axis=1)
    keep_all = jnp.sum(state.active & ~isolated) < 2
    active = state.active & (keep_all | ~isolated)
    # 7. insertion every lambda inputs while below capacity.
    seen = state.inputs_seen + 1
    q = jnp.argmax(jnp.where(active, error, -big))
    f = jnp.argmax(jnp.where(edges[q], error, -big))
    r = jnp.argmax(~active)
    do_insert = (seen % cfg.insert_every == 0) & (jnp.sum(active) < k) & jnp.any(edges[q])

    def insert(args):
        nodes, active, edges, ages, error, idle = args
        nodes = nodes.at[r].set(0.5 * (nodes[q] + nodes[f]))
        idle = idle.at[r].set(0)
        active = active.at[r].set(True)
        edges = edges.at[q, f].set(False).at[f, q].set(False)
        edges = edges.at[q, r].set(True).at[r, q].set(True).at[r, f].set(True).at[f, r].set(True)
        ages = ages.at[q, f].set(0).at[f, q].set(0).at[q, r].set(0).at[r, q].set(0).at[r, f].set(0).at[f, r].set(0)
        error = error.at[q].multiply(cfg.alpha).at[f].multiply(cfg.alpha)
        error = error.at[r].set(error[q])
        return nodes, active, edges, ages, error, idle

    nodes, active, edges, ages, error, idle = jax.lax.cond(
        do_insert, insert, lambda a: a, (nodes, active, edges, ages, error, idle)
    )
    # 8. global error decay.
    error = error * cfg.decay
    new = state.replace(nodes=nodes, active=active, edges=edges, ages=ages, error=error, idle=idle, inputs_seen=seen)
    return new, (s1, d2[s1], do_insert)


def _initialize(state: GNGState, xs: jax.Array) -> GNGState:
    """Two connected nodes at the first two inputs; covariances from the batch."""
    nodes = jnp.broadcast_to(xs[0], state.nodes.shape).at[1].set(xs[1])
    active = jnp.zeros_like(state.active).at[:2].set(True)
    edges = jnp.zeros_like(state.edges).at[0, 1].set(True).at[1, 0].set(True)
    r = xs - jnp.mean(xs, axis=0)
    cov = regularize((r.T @ r) / xs.shape[0])
    if state.covs.shape[0] == 1:
        cov = jnp.eye(xs.shape[1], dtype=xs.dtype) * jnp.trace(cov) / xs.shape[1]
    return state.replace(
        nodes=nodes,
        active=active,
        edges=edges,
        ages=jnp.zeros_like(state.ages),
        error=jnp.zeros_like(state.error),
        idle=jnp.zeros_like(state.idle),
        wins=jnp.zeros_like(state.wins).at[:2].set(0.5),
        covs=jnp.broadcast_to(cov, state.covs.shape),
        means=nodes,
        initialized=jnp.ones((), bool),
    )


def update(state: GNGState, xs: jax.Array, cfg: GNGConfig = GNGConfig()) -> tuple[GNGState, dict[str, jax.Array]]:
    """Feeds the inputs xs [N, D] (stop-gradient, in order) through Fritzke's algorithm
    in one lax.scan, then updates the mixture statistics. The first call on an
    uninitialised state places two nodes at xs[0] and xs[1].

    Returns (state, metrics {'gng_nodes', 'gng_edges', 'gng_quantization_error',
    'gng_inserted'}).

    Example:
      >>> state = gje_jax.remedies.gng.GNGState.create(capacity=12, dim=2)
      >>> state, metrics = gje_jax.remedies.gng.update(state, jax.random.normal(jax.random.key(0), (1000, 2)), gje_jax.remedies.gng.GNGConfig(insert_every=100))
      >>> int(state.num_active()), int(metrics["gng_inserted"])   # one node per 100 inputs, up to 12
      (12, 10)
    """
    xs = jax.lax.stop_gradient(v.as_float(xs, "xs"))
    v.check_rank(xs, 2, "xs", "[N, D]")
    if xs.shape[1] != state.nodes.shape[1]:
        raise ValueError(f"xs has D = {xs.shape[1]} but the graph has D = {state.nodes.shape[1]}.")
    if xs.shape[0] < 2:
        raise ValueError(f"GNG needs at least 2 inputs per update, got shape {tuple(xs.shape)}.")
    v.check_finite_if_concrete(xs, "xs")  # NaN would be written into the nodes
    v.check_state_if_concrete(state, "state")
    before = state.active
    state = jax.lax.cond(state.initialized, lambda s: s, lambda s: _initialize(s, xs), state)
    state, (winners, sq_err, inserted) = jax.lax.scan(lambda s, x: _step(cfg, s, x), state, xs)
    state = _refresh_statistics(state, xs, winners, before, cfg)
    metrics = {
        "gng_nodes": state.num_active().astype(jnp.float32),
        "gng_edges": state.num_edges().astype(jnp.float32),
        "gng_quantization_error": jnp.mean(sq_err),
        # Insertions in this update, re-insertions after a node's removal included (the
        # node count alone misses a removal and an insertion in one update).
        "gng_inserted": jnp.sum(inserted).astype(jnp.float32),
    }
    return state, metrics


def _refresh_statistics(state: GNGState, xs, winners, active_before, cfg: GNGConfig) -> GNGState:
    """EMA of win shares and of residual second moments about the (moved) nodes."""
    k, d = state.nodes.shape
    m = cfg.momentum
    onehot = jax.nn.one_hot(winners, k, dtype=xs.dtype) * state.active  # a node deleted since winning drops out
    counts = jnp.sum(onehot, axis=0)
    share = counts / jnp.maximum(jnp.sum(counts), 1.0)
    new = state.active & ~active_before
    wins = jnp.where(state.active, m * state.wins + (1 - m) * share, 0.0)
    # A node inserted this batch starts with the mean share of the active nodes.
    wins = jnp.where(new, jnp.sum(wins) / jnp.maximum(state.num_active(), 1), wins)
    if cfg.means == "cells":
        won = (counts > 0)[:, None]
        cell = (onehot.T @ xs) / jnp.maximum(counts, 1.0)[:, None]
        means = jnp.where(won, m * state.means + (1 - m) * cell, state.means)
        # An inserted node starts at its cell's mean (at its position if it won nothing).
        means = jnp.where(new[:, None], jnp.where(won, cell, state.nodes), means)
    else:
        means = state.nodes
    state = state.replace(means=means)
    resid = xs - onehot @ means  # [N, D] residual to its winner's component mean
    if state.covs.shape[0] == 1:
        var = jnp.sum(resid * resid) / jnp.maximum(jnp.sum(counts), 1.0) / d
        covs = m * state.covs + (1 - m) * var * jnp.eye(d, dtype=xs.dtype)
        return state.replace(wins=wins, covs=covs)
    # Per-node second moments: [K, N, D] weighted residuals, one batched matmul.
    weighted = onehot.T[:, :, None] * resid[None]  # [K, N, D]
    second = jnp.einsum("knd,ne->kde", weighted, resid) / jnp.maximum(counts, 1.0)[:, None, None]
    seen = (counts > 0)[:, None, None]
    covs = jnp.where(seen, m * state.covs + (1 - m) * second, state.covs)
    avg = jnp.sum(jnp.where(state.active[:, None, None], covs, 0.0), axis=0) / jnp.maximum(state.num_active(), 1)
    covs = jnp.where(new[:, None, None], avg, covs)
    return state.replace(wins=wins, covs=covs)


def mixture(
    state: GNGState, floor: float = 1e-4, pooled_eps_rel: float = 0.0, pooled_shape: str = "isotropic"
) -> GaussianMixture:
    """The mixture view: means = `state.means` (cell means or node positions, see
    GNGConfig.means), covariances = EMA residual second
    moments + floor I + R, where R is the pooled ridge of the whole graph's mixture
    (`gje_jax.pooled_ridge`, of the moments without a ridge: pooled_eps_rel times its
    average variance times I, or times its total covariance), weights proportional to EMA
    win shares; inactive nodes get log-weight -inf (and an identity factor so every entry
    stays finite). Stop-gradient. An uninitialised graph (no active node) gives its
    placeholder nodes uniform weights.

    The pooled ridge bounds how tight a node's Gaussian can be relative to the spread of
    the embeddings (see `gje_jax.pooled_variance`); the absolute floor does not.

    Example:
      >>> state, _ = gje_jax.remedies.gng.update(gje_jax.remedies.gng.GNGState.create(8, 2), jax.random.normal(jax.random.key(0), (256, 2)))
      >>> gm = gje_jax.remedies.gng.mixture(state)                         # inactive nodes: log-weight -inf
      >>> gm.means.shape, int(jnp.isfinite(gm.log_weights).sum()) == int(state.num_active())
      ((8, 2), True)
    """
    s = jax.lax.stop_gradient(state)
    k, d = s.nodes.shape
    covs = jnp.broadcast_to(s.covs, (k, d, d))
    eye = jnp.eye(d, dtype=s.nodes.dtype)
    check_pooled_ridge(pooled_eps_rel, pooled_shape)
    wins = jnp.maximum(s.wins, 1e-6)
    ridge = 0.0
    if not v.is_zero(pooled_eps_rel):
        share = jnp.where(s.active, wins, 0.0)
        share = share / jnp.maximum(jnp.sum(share), 1e-30)
        active_covs = jnp.where(s.active[:, None, None], covs, 0.0)
        ridge = pooled_ridge(share, s.means, active_covs, pooled_eps_rel, pooled_shape)
    covs = jnp.where(s.active[:, None, None], regularize(covs, 0.0, floor) + ridge, eye)
    log_w = jnp.where(s.active, jnp.log(wins), -jnp.inf)
    # Before the first update no node is active: the placeholder nodes (at 0, identity
    # covariances) then stand in with uniform weights, so a first loss stays finite.
    log_w = jnp.where(jnp.any(s.active), log_w, 0.0)
    return GaussianMixture(log_w, s.means, linalg.cholesky(covs))


def quantization_error(state: GNGState, xs: jax.Array) -> jax.Array:
    """Mean squared distance of xs [N, D] to the nearest active node. -> [].

    Example:
      >>> xs = jax.random.normal(jax.random.key(0), (512, 2))
      >>> state, _ = gje_jax.remedies.gng.update(gje_jax.remedies.gng.GNGState.create(8, 2), xs, gje_jax.remedies.gng.GNGConfig(insert_every=50))
      >>> float(gje_jax.remedies.gng.quantization_error(state, xs)) < float(jnp.mean(jnp.sum(xs**2, 1)))   # beats one node at 0
      True
    """
    xs = v.as_float(xs, "xs")
    w = state.nodes
    d2 = jnp.sum(xs * xs, -1, keepdims=True) + jnp.sum(w * w, -1) - 2.0 * xs @ w.T  # [N, K], no [N, K, D]
    return jnp.mean(jnp.min(jnp.where(state.active, d2, jnp.inf), axis=1))
