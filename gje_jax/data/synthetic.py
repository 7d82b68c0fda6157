"""Synthetic data for CPU-sized runs: clustered points seen through two noisy views."""

from __future__ import annotations

import jax
import numpy as np


def make_clustered(
    seed: int, num_examples: int, dim: int, num_clusters: int, spread: float = 0.3, point_seed: int | None = None
) -> dict[str, np.ndarray]:
    """Points x [n, dim] float32 around `num_clusters` random centres on the unit sphere,
    with integer labels [n] (the cluster). The centres depend on `seed` only; point_seed
    (if given) draws other points around the same centres (a held-out set).

    Example:
      >>> from gje_jax.data import synthetic
      >>> data = synthetic.make_clustered(0, num_examples=100, dim=4, num_clusters=3)
      >>> data["x"].shape, sorted(set(data["label"].tolist()))
      ((100, 4), [0, 1, 2])
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    if point_seed is not None:
        rng = np.random.default_rng([seed, point_seed])
    labels = rng.integers(0, num_clusters, size=num_examples)
    x = centres[labels] + spread / np.sqrt(dim) * rng.normal(size=(num_examples, dim))
    return {"x": x.astype(np.float32), "label": labels.astype(np.int32)}


def clustered_views(batch: dict[str, jax.Array], key: jax.Array, *, noise: float) -> tuple[jax.Array, jax.Array]:
    """Two views of x [B, dim]: independent Gaussian noise of std `noise` (on device).

    Example:
      >>> from gje_jax.data import synthetic
      >>> a, b = synthetic.clustered_views({"x": jnp.zeros((4, 8))}, jax.random.key(0), noise=0.1)
      >>> a.shape, bool(jnp.any(a != b))
      ((4, 8), True)
    """
    ka, kb = jax.random.split(key)
    x = batch["x"]
    return (x + noise * jax.random.normal(ka, x.shape, x.dtype), x + noise * jax.random.normal(kb, x.shape, x.dtype))


def views_for(data_config):
    """The on-device view function of a data config: (batch, key) -> (view_a, view_b).

    Example:
      >>> from gje_jax.data import synthetic
      >>> from gje_jax.train.configs import base_config
      >>> views = synthetic.views_for(base_config().data)         # (batch, key) -> (view_a, view_b)
      >>> views({"x": jnp.zeros((2, 32))}, jax.random.key(0))[0].shape
      (2, 32)
    """
    if data_config.name == "clustered":
        noise = float(data_config.noise)
        return lambda batch, key: clustered_views(batch, key, noise=noise)
    if data_config.name == "alignment":
        return pair_views
    raise ValueError(f"config.data.name={data_config.name!r} has no view function.")


def pair_views(batch: dict[str, jax.Array], key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The views of an alignment pair: context c [B, d_c] and target t [B, d_t] as they are.

    Example:
      >>> from gje_jax.data import synthetic
      >>> c, t = synthetic.pair_views({"c": jnp.zeros((4, 1)), "t": jnp.ones((4, 2))}, jax.random.key(0))
      >>> c.shape, t.shape
      ((4, 1), (4, 2))
    """
    return batch["c"], batch["t"]


def load(data_config, seed: int) -> dict[str, np.ndarray]:
    """The in-memory synthetic dataset of config.data: 'clustered' -> {'x' [n, dim] float32,
    'label' [n] int32}; 'alignment' -> the task's pairs {'c' [n, d_c], 't' [n, d_t]} float32,
    drawn with numpy's generator of `seed`.

    Example:
      >>> from gje_jax.data import synthetic
      >>> from gje_jax.train.configs import base_config
      >>> data = synthetic.load(base_config().data, seed=0)
      >>> data["x"].shape, data["label"].dtype
      ((8192, 32), dtype('int32'))
    """
    d = data_config
    if d.name == "clustered":
        return make_clustered(seed, d.num_examples, d.dim, d.num_clusters)
    if d.name == "alignment":
        task = make_task(d.task, context_dim=d.context_dim, target_dim=d.target_dim, noise=d.noise)
        c, t = task.sample(np.random.default_rng(seed), d.num_examples)
        return {"c": c, "t": t}
    raise ValueError(f"config.data.name={d.name!r} is unknown; valid: ['alignment', 'clustered'].")


# ---- multi-modal alignment tasks with a known p(t | c) (METHOD section 10) -------------

_LOG_2PI = float(np.log(2.0 * np.pi))


def _gauss_logpdf(t: np.ndarray, mean: np.ndarray, sigma: float) -> np.ndarray:
    """Isotropic log N(t | mean, sigma^2 I) over the last axis (broadcasting)."""
    d = t.shape[-1]
    return -0.5 * np.sum(((t - mean) / sigma) ** 2, axis=-1) - d * np.log(sigma) - 0.5 * d * _LOG_2PI


class AlignmentTask:
    """A context -> target task with a known conditional p(t | c).

    Attributes:
      name; context_dim d_c; target_dim d_t; noise (standard deviation of the target
      noise, isotropic).

    Methods (numpy, float64 in, float32 out for samples):
      sample(rng, n) -> (c [n, d_c], t [n, d_t]);
      branches(c) -> (centres [n, B, d_t], log_probs [n, B]): the noise-free targets and
        their probabilities (for the ring: B points spread on the circle);
      true_log_prob(c, t) -> [n]; true_mean(c) -> [n, d_t];
      on_branch(c, samples [n, S, d_t]) -> [n, S] bool (within 3 noise std of the truth's
        support); branch_hits(c, samples) -> [n, B] bool (which branches some precise
        sample reaches).

    Example:
      >>> from gje_jax.data import synthetic
      >>> task = synthetic.TwoBranch(noise=0.1)                   # every task is an AlignmentTask
      >>> c, t = task.sample(np.random.default_rng(0), 4)
      >>> c.shape, t.shape, task.true_log_prob(c, t).shape
      ((4, 1), (4, 1), (4,))
    """

    name = "task"

    def __init__(self, context_dim: int = 1, target_dim: int = 1, noise: float = 0.1):
        if context_dim < 1 or target_dim < 1 or noise <= 0:
            raise ValueError(
                f"{self.name}: context_dim and target_dim must be >= 1 and noise > 0, "
                f"got {context_dim}, {target_dim}, {noise}."
            )
        self.context_dim, self.target_dim, self.noise = context_dim, target_dim, float(noise)

    # Subclasses define _contexts(rng, n) and branches(c).
    def _contexts(self, rng, n):
        return rng.uniform(-2.0, 2.0, size=(n, self.context_dim))

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        c = self._contexts(rng, n)
        centres, log_p = self.branches(c)
        u = rng.random(n)[:, None]
        pick = np.argmax(np.cumsum(np.exp(log_p), axis=1) > u * np.exp(log_p).sum(1, keepdims=True), axis=1)
        t = centres[np.arange(n), pick] + self.noise * rng.normal(size=(n, self.target_dim))
        return c.astype(np.float32), t.astype(np.float32)

    def true_log_prob(self, c, t) -> np.ndarray:
        centres, log_p = self.branches(np.asarray(c, np.float64))
        comp = _gauss_logpdf(np.asarray(t, np.float64)[:, None, :], centres, self.noise)
        m = np.max(comp + log_p, axis=1, keepdims=True)
        return (m + np.log(np.sum(np.exp(comp + log_p - m), axis=1, keepdims=True)))[:, 0]

    def true_mean(self, c) -> np.ndarray:
        centres, log_p = self.branches(np.asarray(c, np.float64))
        return np.einsum("nb,nbd->nd", np.exp(log_p), centres)

    def on_branch(self, c, samples) -> np.ndarray:
        centres, _ = self.branches(np.asarray(c, np.float64))
        dist = np.linalg.norm(np.asarray(samples)[:, :, None, :] - centres[:, None], axis=-1)  # [n, S, B]
        return np.min(dist, axis=2) <= 3.0 * self.noise

    def branch_hits(self, c, samples) -> np.ndarray:
        centres, _ = self.branches(np.asarray(c, np.float64))
        dist = np.linalg.norm(np.asarray(samples)[:, :, None, :] - centres[:, None], axis=-1)
        return np.any(dist <= 3.0 * self.noise, axis=1)  # [n, B]


class TwoBranch(AlignmentTask):
    """t = s * g(c) e_1 + noise, s = +-1 with equal probability, g(c) = 1 + 0.25 c_1
    (branches at least 1 apart for c in [-2, 2]).

    Example:
      >>> from gje_jax.data import synthetic
      >>> task = synthetic.TwoBranch(noise=0.1)
      >>> c, t = task.sample(np.random.default_rng(0), 500)
      >>> float(task.on_branch(c, t[:, None, :]).mean()) > 0.95  # samples of the task lie on a branch
      True
    """

    name = "two_branch"

    @staticmethod
    def g(c):
        return 1.0 + 0.25 * np.asarray(c)[:, :1]

    def branches(self, c):
        n = c.shape[0]
        e1 = np.zeros((self.target_dim,))
        e1[0] = 1.0
        up = self.g(c) * e1  # [n, d_t]
        return np.stack([up, -up], axis=1), np.full((n, 2), np.log(0.5))


class KBranch(AlignmentTask):
    """K curves t = (2 (k - (K-1)/2) + 0.5 sin(2 c_1)) e_1 with probabilities `probs`.

    Example:
      >>> from gje_jax.data import synthetic
      >>> task = synthetic.KBranch(probs=(0.5, 0.3, 0.2))
      >>> c, t = task.sample(np.random.default_rng(0), 2000)
      >>> float(task.branch_hits(c, t[:, None, :]).sum(0).max()) > 0   # samples sit on the branches
      True
    """

    name = "k_branch"

    def __init__(self, context_dim=1, target_dim=1, noise=0.1, probs=(0.5, 0.3, 0.2)):
        super().__init__(context_dim, target_dim, noise)
        probs = np.asarray(probs, np.float64)
        if probs.ndim != 1 or len(probs) < 2 or np.any(probs <= 0) or abs(probs.sum() - 1) > 1e-6:
            raise ValueError(f"k_branch probs must be K >= 2 positive numbers summing to 1, got {probs.tolist()}.")
        self.probs = probs

    def branches(self, c):
        n, k = c.shape[0], len(self.probs)
        offsets = 2.0 * (np.arange(k) - (k - 1) / 2.0)
        e1 = np.zeros((self.target_dim,))
        e1[0] = 1.0
        level = offsets[None, :] + 0.5 * np.sin(2.0 * c[:, :1])  # [n, K]
        return level[..., None] * e1, np.broadcast_to(np.log(self.probs), (n, k)).copy()


class Ring(AlignmentTask):
    """c_1 = radius in [1, 2]; t = c_1 (cos a, sin a) + noise with a ~ U[0, 2 pi): every
    angle is valid, so p(t | c) is a ring. Needs d_t = 2. Scored against 8 points
    spread on the circle (branches) for recall and against the circle for precision.

    Example:
      >>> from gje_jax.data import synthetic
      >>> c, t = synthetic.Ring(noise=0.01).sample(np.random.default_rng(0), 5)
      >>> t.shape
      (5, 2)
    """

    name = "ring"
    num_points = 8
    quadrature = 256

    def __init__(self, context_dim=1, target_dim=2, noise=0.1):
        if target_dim != 2:
            raise ValueError(f"ring needs target_dim = 2, got {target_dim}.")
        super().__init__(context_dim, target_dim, noise)

    def _contexts(self, rng, n):
        c = rng.uniform(-2.0, 2.0, size=(n, self.context_dim))
        c[:, 0] = rng.uniform(1.0, 2.0, size=n)
        return c

    def _circle(self, c, m):
        a = 2.0 * np.pi * (np.arange(m) + 0.5) / m
        return c[:, :1, None] * np.stack([np.cos(a), np.sin(a)], axis=-1)[None]  # [n, m, 2]

    def branches(self, c):
        return self._circle(c, self.num_points), np.full((c.shape[0], self.num_points), -np.log(self.num_points))

    def sample(self, rng, n):
        c = self._contexts(rng, n)
        a = rng.uniform(0.0, 2.0 * np.pi, size=n)
        t = c[:, :1] * np.stack([np.cos(a), np.sin(a)], axis=1) + self.noise * rng.normal(size=(n, 2))
        return c.astype(np.float32), t.astype(np.float32)

    def true_log_prob(self, c, t):
        # The angle integral by a fine quadrature (error far below the reported digits).
        c, t = np.asarray(c, np.float64), np.asarray(t, np.float64)
        pts = self._circle(c, self.quadrature)
        comp = _gauss_logpdf(t[:, None, :], pts, self.noise) - np.log(self.quadrature)
        m = comp.max(1, keepdims=True)
        return (m + np.log(np.exp(comp - m).sum(1, keepdims=True)))[:, 0]

    def true_mean(self, c):
        return np.zeros((np.asarray(c).shape[0], 2))

    def on_branch(self, c, samples):
        r = np.linalg.norm(np.asarray(samples, np.float64), axis=-1)  # [n, S]
        return np.abs(r - np.asarray(c, np.float64)[:, :1]) <= 3.0 * self.noise

    def branch_hits(self, c, samples):
        s = np.asarray(samples, np.float64)
        sector = (np.floor((np.arctan2(s[..., 1], s[..., 0]) % (2 * np.pi)) / (2 * np.pi) * self.num_points)).astype(
            int
        )
        ok = self.on_branch(c, samples)
        hits = np.zeros((s.shape[0], self.num_points), bool)
        for b in range(self.num_points):
            hits[:, b] = np.any(ok & (sector == b), axis=1)
        return hits


class Control(AlignmentTask):
    """Linear-Gaussian: c ~ N(0, I), t = A c + noise with a fixed A; one joint Gaussian is
    exactly right, so GJE should match the true conditional NLL.

    Example:
      >>> from gje_jax.data import synthetic
      >>> task = synthetic.Control()                               # unimodal: GJE is exact here
      >>> c, t = task.sample(np.random.default_rng(0), 1000)
      >>> bool(np.abs(t - task.true_mean(c)).std() < 0.4)
      True
    """

    name = "control"

    def __init__(self, context_dim=1, target_dim=1, noise=0.3):
        super().__init__(context_dim, target_dim, noise)
        self.a = np.random.default_rng(1234).normal(size=(target_dim, context_dim))

    def _contexts(self, rng, n):
        return rng.normal(size=(n, self.context_dim))

    def branches(self, c):
        return (np.asarray(c) @ self.a.T)[:, None, :], np.zeros((c.shape[0], 1))


TASKS = {"two_branch": TwoBranch, "k_branch": KBranch, "ring": Ring, "control": Control}


def make_task(name: str, **kwargs) -> AlignmentTask:
    """An alignment task by name (two_branch, k_branch, ring, control).

    Example:
      >>> from gje_jax.data import synthetic
      >>> type(synthetic.make_task("ring", noise=0.05)).__name__
      'Ring'
    """
    if name not in TASKS:
        raise ValueError(f"Unknown alignment task {name!r}; valid: {sorted(TASKS)}.")
    return TASKS[name](**kwargs)
