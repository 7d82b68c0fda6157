"""Metrics of unconditional samples against real embeddings (METHOD section 10).

All take real x [N, D] and sampled y [M, D] float arrays and return Python floats (or a
dict of them). Pairwise work is chunked: memory is O(chunk * max(N, M)), never [N, M]
at once, so N = M = 50k fits on a laptop.

- `frechet_distance`: between the Gaussian fits of x and y (FID's formula, on embeddings).
- `mmd_rbf`: unbiased MMD^2 with an RBF kernel, median-heuristic bandwidth by default.
- `precision_recall`: k-NN-ball manifold precision and recall (Kynkaanniemi et al., 2019).
- `class_coverage`: labels of the samples' nearest real neighbours: classes hit, entropy.

Example:
    frechet_distance(real, fake), mmd_rbf(real, fake), precision_recall(real, fake, k=3)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gje_jax._mahalanobis import squared_distances


def _as_2d(name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be real-valued, got dtype {x.dtype}.")
    x = x.astype(np.float32)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name} must be [N, D] with N >= 2, got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or Inf.")
    return x


def _pair(x, y):
    x, y = _as_2d("x", x), _as_2d("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape} and {y.shape}.")
    return x, y


def _chunks(n: int, chunk: int):
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]


def _padded(a: np.ndarray, s: int, e: int, chunk: int) -> np.ndarray:
    """Rows s:e of a, padded (with row s) to exactly `chunk` rows so jitted blocks compile once."""
    block = a[s:e]
    if e - s < chunk:
        block = np.concatenate([block, np.repeat(block[:1], chunk - (e - s), axis=0)])
    return block


_sq_dists = jax.jit(squared_distances)


# ---- Frechet distance -----------------------------------------------------------------------


def frechet_distance_gaussians(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) in float64 (host).
    mu [D], cov [D, D] symmetric positive semi-definite.

    Example:
      >>> gje_jax.sampling_metrics.frechet_distance_gaussians(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2))
      4.0
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    c1, c2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    w, v = np.linalg.eigh(c1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root1 @ c2 @ root1
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * cross)


def frechet_distance(x, y) -> float:
    """Frechet distance between Gaussian fits (mean, unbiased covariance) of x [N, D] and y [M, D].

    Example:
      >>> x = np.random.default_rng(0).normal(size=(5000, 2))
      >>> round(gje_jax.sampling_metrics.frechet_distance(x, x + [3.0, 4.0]), 3)   # |mu1 - mu2|^2
      25.0
    """
    x, y = _pair(x, y)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    return frechet_distance_gaussians(x64.mean(0), np.cov(x64, rowvar=False), y64.mean(0), np.cov(y64, rowvar=False))


# ---- MMD ------------------------------------------------------------------------------------


def median_bandwidth(x, y, max_points: int = 1000, seed: int = 0) -> float:
    """Median pairwise distance of (a subsample of) the pooled set: the RBF bandwidth h.

    Example:
      >>> h = gje_jax.sampling_metrics.median_bandwidth(np.zeros((10, 2)), np.ones((10, 2)))
      >>> h > 0
      True
    """
    x, y = _pair(x, y)
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([x[rng.permutation(len(x))[:max_points]], y[rng.permutation(len(y))[:max_points]]])
    d = np.asarray(_sq_dists(pooled, pooled))
    off = d[~np.eye(len(pooled), dtype=bool)]
    return float(np.sqrt(np.median(off)))


@jax.jit
def _kernel_sum(a, b, inv_two_h2, a_valid, b_valid):
    k = jnp.exp(-_sq_dists(a, b) * inv_two_h2)
    return jnp.sum(k * a_valid[:, None] * b_valid[None, :])


def _block_sum(a: np.ndarray, b: np.ndarray, inv_two_h2: float, chunk: int) -> float:
    """sum_{i, j} k(a_i, b_j), in [chunk, chunk] blocks (float64 accumulation on host)."""
    total = 0.0
    for s, e in _chunks(len(a), chunk):
        av = (np.arange(chunk) < e - s).astype(np.float32)
        ab = _padded(a, s, e, chunk)
        for t, f in _chunks(len(b), chunk):
            bv = (np.arange(chunk) < f - t).astype(np.float32)
            total += float(_kernel_sum(ab, _padded(b, t, f, chunk), inv_two_h2, av, bv))
    return total


def mmd_rbf(x, y, bandwidth: float | None = None, chunk: int = 2048) -> float:
    """Unbiased MMD^2 between x [N, D] and y [M, D] with k(a, b) = exp(-||a - b||^2 / (2 h^2)).

    h = bandwidth, or the median heuristic (median_bandwidth) when None. The diagonal terms
    k(x_i, x_i) = 1 are removed from the within-set sums. Can be slightly negative when the
    sets come from the same distribution.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> x, y = rng.normal(size=(500, 2)), rng.normal(size=(500, 2))
      >>> abs(gje_jax.sampling_metrics.mmd_rbf(x, y)) < 0.01, gje_jax.sampling_metrics.mmd_rbf(x, y + 3) > 0.5
      (True, True)
    """
    x, y = _pair(x, y)
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth must be positive, got {h}.")
    g = 1.0 / (2.0 * h * h)
    n, m = len(x), len(y)
    kxx = (_block_sum(x, x, g, chunk) - n) / (n * (n - 1))
    kyy = (_block_sum(y, y, g, chunk) - m) / (m * (m - 1))
    kxy = _block_sum(x, y, g, chunk) / (n * m)
    return float(kxx + kyy - 2.0 * kxy)


# ---- k-NN manifold precision / recall and class coverage ------------------------------------


@functools.partial(jax.jit, static_argnames=("k",))
def _kth_smallest(a, b, k: int):
    """Per row of a, the k-th smallest squared distance to b (k = 1 is the nearest)."""
    neg, _ = jax.lax.top_k(-_sq_dists(a, b), k)
    return -neg[:, k - 1]


def knn_radii(x, k: int, chunk: int = 1024) -> np.ndarray:
    """Squared distance of each row of x [N, D] to its k-th nearest other row -> [N].

    Example:
      >>> gje_jax.sampling_metrics.knn_radii(np.array([[0.0], [1.0], [3.0]]), k=1).tolist()   # squared distance to the nearest other point
      [1.0, 1.0, 4.0]
    """
    x = _as_2d("x", x)
    if not 0 < k < len(x):
        raise ValueError(f"k={k} must be in [1, {len(x) - 1}].")
    out = []
    for s, e in _chunks(len(x), chunk):
        # k + 1: each point is its own nearest neighbour at distance 0.
        out.append(np.asarray(_kth_smallest(_padded(x, s, e, chunk), x, k + 1))[: e - s])
    return np.concatenate(out)


@jax.jit
def _inside_any(q, centres, radii):
    return jnp.any(_sq_dists(q, centres) <= radii[None, :], axis=1)


def _coverage(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int) -> float:
    hits = []
    for s, e in _chunks(len(queries), chunk):
        hits.append(np.asarray(_inside_any(_padded(queries, s, e, chunk), centres, radii))[: e - s])
    return float(np.mean(np.concatenate(hits)))


def precision_recall(real, fake, k: int = 3, chunk: int = 1024) -> dict:
    """k-NN-ball manifold precision and recall.

    precision: fraction of fake samples inside some real ball (centre a real point, radius
    its distance to its k-th nearest real neighbour); recall: fraction of real points inside
    some fake ball. Returns {'precision', 'recall'} in [0, 1].

    Example:
      >>> x = np.random.default_rng(0).normal(size=(300, 2))
      >>> pr = gje_jax.sampling_metrics.precision_recall(x, x, k=3)
      >>> pr["precision"], pr["recall"]
      (1.0, 1.0)
    """
    real, fake = _pair(real, fake)
    r_real, r_fake = knn_radii(real, k, chunk), knn_radii(fake, k, chunk)
    return {
        "precision": _coverage(fake, real, r_real, chunk),
        "recall": _coverage(real, fake, r_fake, chunk),
    }


@jax.jit
def _nearest(q, centres):
    return jnp.argmin(_sq_dists(q, centres), axis=1)


def class_coverage(real, real_labels, fake, num_classes: int, chunk: int = 1024) -> dict:
    """Each sample takes the label of its nearest real neighbour.

    Returns {'classes_hit': fraction of the num_classes labels taken by some sample,
    'label_entropy': entropy (nats) of the sample-label histogram, 'max_entropy': log C,
    'histogram': [C] fractions}.

    Example:
      >>> real = np.array([[0.0], [1.0], [10.0], [11.0]]); labels = np.array([0, 0, 1, 1])
      >>> gje_jax.sampling_metrics.class_coverage(real, labels, np.array([[0.2], [0.8]]), num_classes=2)["classes_hit"]
      0.5
    """
    real, fake = _pair(real, fake)
    labels = np.asarray(real_labels)
    if labels.shape != (len(real),):
        raise ValueError(f"real_labels must be [N] = [{len(real)}], got {labels.shape}.")
    idx = []
    for s, e in _chunks(len(fake), chunk):
        idx.append(np.asarray(_nearest(_padded(fake, s, e, chunk), real))[: e - s])
    hist = np.bincount(labels[np.concatenate(idx)], minlength=num_classes)[:num_classes] / len(fake)
    nz = hist[hist > 0]
    return {
        "classes_hit": float(np.mean(hist > 0)),
        "label_entropy": float(-np.sum(nz * np.log(nz))),
        "max_entropy": float(np.log(num_classes)),
        "histogram": hist,
    }


def idle_prior_mass(weights, responsibilities, level: float = 0.01) -> float:
    """Prior mass on components that hold less than `level` of the held-out responsibility:
    sum of weights_k over k with mean_n r_nk < level. A density whose mass sits where the
    data is scores near 0; one that keeps weight on components explaining nothing scores up
    to 1.

    Args:
      weights: [K] prior weights (summing to one); responsibilities: [N, K] of held-out points.

    Example:
      >>> from gje_jax import sampling_metrics
      >>> r = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])             # component 2 explains nothing
      >>> sampling_metrics.idle_prior_mass(np.array([0.5, 0.2, 0.3]), r)
      0.3
    """
    w = np.asarray(weights, np.float64)
    r = _as_2d("responsibilities", responsibilities)
    if w.ndim != 1 or r.shape[1] != w.shape[0]:
        raise ValueError(f"weights [K] and responsibilities [N, K] must agree, got {w.shape} and {r.shape}.")
    return float(np.sum(w[r.mean(axis=0) < level]))
