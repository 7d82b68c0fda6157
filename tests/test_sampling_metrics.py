"""Sampling metrics against closed forms and brute-force references."""

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.spatial.distance import cdist, pdist
from sklearn.neighbors import NearestNeighbors

from gje_jax import sampling_metrics as sm


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_between_known_gaussians():
    rng = np.random.default_rng(0)
    # Diagonal covariances: sum (sqrt(a) - sqrt(b))^2 + ||delta||^2.
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert sm.frechet_distance_gaussians(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-9)
    # Full covariances: the textbook formula with scipy's matrix square root.
    c1, c2 = _spd(rng, 6), _spd(rng, 6)
    want = np.trace(c1 + c2 - 2 * np.real(sqrtm(c1 @ c2)))
    assert sm.frechet_distance_gaussians(np.zeros(6), c1, np.zeros(6), c2) == pytest.approx(want, rel=1e-6)
    assert sm.frechet_distance_gaussians(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_of_samples_converges_to_the_closed_form():
    rng = np.random.default_rng(1)
    c1, c2 = _spd(rng, 4), _spd(rng, 4)
    x = rng.multivariate_normal(np.zeros(4), c1, 40000)
    y = rng.multivariate_normal(np.ones(4), c2, 40000)
    want = sm.frechet_distance_gaussians(np.zeros(4), c1, np.ones(4), c2)
    assert sm.frechet_distance(x, y) == pytest.approx(want, rel=0.03)


def _mmd_brute(x, y, h):
    k = lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * h * h))  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    return (kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean()


def test_mmd_matches_brute_force_with_chunks_and_padding():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(301, 3)), rng.normal(0.3, 1.2, size=(157, 3))
    assert sm.mmd_rbf(x, y, bandwidth=1.5, chunk=64) == pytest.approx(_mmd_brute(x, y, 1.5), abs=1e-5)
    pooled = np.concatenate([x, y])
    assert sm.median_bandwidth(x, y) == pytest.approx(np.median(pdist(pooled)), rel=1e-4)


def test_mmd_identical_near_zero_and_shifted_near_analytic():
    rng = np.random.default_rng(3)
    d, s, h, shift = 2, 1.0, 1.0, 1.5
    x, x2 = rng.normal(size=(4000, d)), rng.normal(size=(4000, d))
    assert abs(sm.mmd_rbf(x, x2, bandwidth=h)) < 3e-3
    y = rng.normal(size=(4000, d)) + np.array([shift, 0.0])
    c = (h * h / (h * h + 2 * s * s)) ** (d / 2)
    want = 2 * c * (1 - np.exp(-(shift**2) / (2 * (h * h + 2 * s * s))))
    assert sm.mmd_rbf(x, y, bandwidth=h) == pytest.approx(want, abs=5e-3)


def test_knn_radii_match_sklearn():
    x = np.random.default_rng(4).normal(size=(500, 4)).astype(np.float32)
    dist, _ = NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x)
    np.testing.assert_allclose(np.sqrt(sm.knn_radii(x, 5, chunk=128)), dist[:, 5], rtol=1e-3, atol=1e-4)


def test_precision_recall_identical_disjoint_and_partial():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(800, 3))
    for k in (3, 5):
        pr = sm.precision_recall(x, x, k=k, chunk=256)
        assert pr["precision"] == 1.0 and pr["recall"] == 1.0
        far = sm.precision_recall(x, x + 100.0, k=k)
        assert far["precision"] == 0.0 and far["recall"] == 0.0
    # Samples covering only half of the real support (x0 > 0): high precision, recall about 1/2.
    half = rng.normal(size=(3000, 3))
    half[:, 0] = np.abs(half[:, 0])
    pr = sm.precision_recall(x, half, k=3)
    assert pr["precision"] > 0.9 and 0.35 < pr["recall"] < 0.65


def test_class_coverage():
    centres = 10 * np.eye(4, 3)
    rng = np.random.default_rng(6)
    labels = np.repeat(np.arange(4), 50)
    real = centres[labels] + 0.1 * rng.normal(size=(200, 3))
    even = centres[np.repeat(np.arange(4), 25)] + 0.1 * rng.normal(size=(100, 3))
    cov = sm.class_coverage(real, labels, even, num_classes=4)
    assert cov["classes_hit"] == 1.0 and cov["label_entropy"] == pytest.approx(np.log(4))
    one = centres[[2] * 30] + 0.1 * rng.normal(size=(30, 3))
    cov = sm.class_coverage(real, labels, one, num_classes=4)
    assert cov["classes_hit"] == 0.25 and cov["label_entropy"] == pytest.approx(0.0)


def test_bad_inputs_are_refused():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="same dimension"):
        sm.mmd_rbf(x, np.zeros((10, 4)))
    with pytest.raises(ValueError, match="NaN"):
        sm.frechet_distance(x, np.full((10, 3), np.nan))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        sm.precision_recall(np.zeros(5), x)
    with pytest.raises(ValueError, match="k="):
        sm.knn_radii(x, 10)


def test_sampling_experiment_runs_end_to_end(tmp_path, one_device):
    from experiments import sampling
    from experiments.configs import sampling as sampling_config

    c = sampling_config.get_config("runlocal")
    c.unlock()
    c.methods = ("gmje_smc", "simclr")
    c.lock()
    rows = sampling.run(c, str(tmp_path), progress=False)
    labels = [r["method"] for r in rows]
    # Density methods sample from their own density; deterministic baselines only post hoc.
    assert "gmje_smc (own density)" in labels and "gmje_smc + post-hoc GMM" in labels
    assert "simclr (own density)" not in labels and "simclr + post-hoc GMM" in labels
    for r in rows:
        assert r["frechet"] >= 0 and 0 <= r["precision_k3"] <= 1 and 0 <= r["classes_hit"] <= 1
    assert (tmp_path / "sampling_results.md").exists() and (tmp_path / "sampling_pca_synthetic.png").exists()
