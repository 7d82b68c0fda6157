r"""Unconditional sampling from each method's learned latent density, judged against real
held-out embeddings (METHOD section 10).

  python -m experiments.main --config=experiments/configs/sampling.py --workdir=runs/sampling

Two parts. `synthetic`: every method is trained here on clustered points seen through two
noisy views (labels = clusters). `cifar10`: the runs of `experiments.report_vision` in
config.vision_workdir are loaded (trained there if missing). For each method, as many
samples as there are held-out embeddings are drawn from the single-view marginal of its
density: GMJE / remedies / GJE from their mixture or Gaussian, the MDN ancestrally
(c from training embeddings, then t ~ p(t | c)), and every method also gets a Gaussian
and a K-component mixture fitted afterwards to its training embeddings (the post-hoc
baselines; K = config.method.num_components). Real and training embeddings are of views
made as in training (noisy views / one augmented view per image), the distribution the
densities were fitted to.

Metrics (gje_jax.sampling_metrics): Frechet distance, RBF MMD^2 (median bandwidth),
k-NN precision / recall (k = 3, 5), classes hit and label entropy of the samples'
nearest real neighbours. Writes sampling_results.{md,csv}, a 2-D PCA figure per part and,
for images, a grid of the nearest training images of samples per method.
"""

from __future__ import annotations

import csv
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from gje_jax import fit_gaussian, methods, sampling_metrics
from gje_jax.data import synthetic
from gje_jax.mixture import component_log_probs
from gje_jax.train import checkpoint, loop, records

from .configs.common import with_method


def view_embeddings(state, views_fn, arrays: dict, key, batch: int = 500):
    """Embeddings [N, E] of both views (as made in training) -> (a, b), in batches."""
    enc = jax.jit(state.encode)
    views = jax.jit(views_fn)
    n = len(next(iter(arrays.values())))
    a, b = [], []
    for s in range(0, n, batch):
        chunk = {k: jnp.asarray(v[s : s + batch]) for k, v in arrays.items()}
        va, vb = views(chunk, jax.random.fold_in(key, s))
        a.append(np.asarray(enc(va)))
        b.append(np.asarray(enc(vb)))
    return np.concatenate(a), np.concatenate(b)


def learned_samples(config, state, train_a, train_b, key, n: int):
    """Samples [n, E] from the method's own density (single-view marginal), or None for
    methods that hold none (deterministic baselines)."""
    method = methods.build(config.method)
    params, mstate = state.params["method"], state.method_state
    e = train_a.shape[1]
    if method.conditional is not None:  # ancestral through the data's contexts
        k1, k2 = jax.random.split(key)
        idx = jax.random.randint(k1, (n,), 0, len(train_a))
        cond = method.conditional(params, mstate, jnp.asarray(train_a)[idx])
        return np.asarray(cond.sample(k2, 1)[:, 0])
    if not method.probabilistic:
        return None
    if method.sampler is not None:
        return np.asarray(method.sampler(params, mstate, key, n, e))
    if method.batch_density:  # the Gaussian of all training embeddings
        m = config.method
        density = fit_gaussian(jnp.asarray(np.concatenate([train_a, train_b], 1)), m.eps_rel, m.eps_abs)
    else:
        density = method.density(params, mstate)
    return np.asarray(density.marginal(0, e).sample(key, n))


# Beyond this many components (the SMC bank's particles) each holds a sliver of the data by
# design, and the idle-mass column is left empty.
MAX_IDLE_COMPONENTS = 64


def own_idle_mass(config, state, real) -> float:
    """Prior mass of the method's own marginal mixture on components holding under 1% of the
    held-out responsibility (`sampling_metrics.idle_prior_mass`); NaN where the method hands
    out no unconditional mixture of at most MAX_IDLE_COMPONENTS components."""
    method = methods.build(config.method)
    if method.density is None or method.conditional is not None or method.batch_density:
        return float("nan")
    density = method.density(state.params["method"], state.method_state)
    if density.num_components > MAX_IDLE_COMPONENTS:
        return float("nan")
    marginal = density.marginal(0, real.shape[1])
    log_w = jax.nn.log_softmax(marginal.log_weights)
    comp, _ = component_log_probs(jnp.asarray(real), marginal.means, marginal.scale_tril)
    resp = jax.nn.softmax(log_w + comp, axis=-1)
    return sampling_metrics.idle_prior_mass(np.exp(np.asarray(log_w, np.float64)), np.asarray(resp))


def posthoc_samples(train_a, k: int, key, n: int, seed: int, real=None):
    """Samples from a Gaussian and from a K-component full-covariance mixture fitted to the
    training embeddings afterwards -> ({'Gaussian': [n, E], 'GMM': [n, E]}, the GMM's idle
    prior mass on `real` [M, E] (NaN without))."""
    from sklearn.mixture import GaussianMixture as SkGMM

    g = fit_gaussian(jnp.asarray(train_a), 1e-4, 1e-6)
    fit = train_a[np.random.default_rng(seed).permutation(len(train_a))[:20000]].astype(np.float64)
    gmm = SkGMM(k, covariance_type="full", reg_covar=1e-4, max_iter=200, random_state=seed).fit(fit)
    z, _ = gmm.sample(n)
    idle = float("nan") if real is None else sampling_metrics.idle_prior_mass(gmm.weights_, gmm.predict_proba(real))
    return {"Gaussian": np.asarray(g.sample(key, n)), "GMM": np.random.default_rng(seed).permutation(z)}, idle


def score(real, labels, fake, num_classes: int) -> dict:
    out = {
        "frechet": sampling_metrics.frechet_distance(real, fake),
        "mmd": sampling_metrics.mmd_rbf(real, fake),
    }
    for k in (3, 5):
        pr = sampling_metrics.precision_recall(real, fake, k=k)
        out[f"precision_k{k}"], out[f"recall_k{k}"] = pr["precision"], pr["recall"]
    cov = sampling_metrics.class_coverage(real, labels, fake, num_classes)
    out["classes_hit"], out["label_entropy"] = cov["classes_hit"], cov["label_entropy"]
    return out


def evaluate_method(part, config, state, views_fn, train, test, num_classes, key, progress=True, posthoc_k=8):
    """All rows of one trained method: its own density (if any), post-hoc Gaussian, post-hoc GMM."""
    tr_a, tr_b = view_embeddings(state, views_fn, train, jax.random.fold_in(key, 1))
    te_a, _ = view_embeddings(state, views_fn, test, jax.random.fold_in(key, 2))
    n = len(te_a)
    name = config.method.name
    samples, idle = {}, {}
    own = learned_samples(config, state, tr_a, tr_b, jax.random.fold_in(key, 3), n)
    if own is not None:
        samples[f"{name} (own density)"] = own
        idle[f"{name} (own density)"] = own_idle_mass(config, state, te_a)
    posthoc, idle[f"{name} + post-hoc GMM"] = posthoc_samples(
        tr_a, posthoc_k, jax.random.fold_in(key, 4), n, config.seed, real=te_a
    )
    for kind, z in posthoc.items():
        samples[f"{name} + post-hoc {kind}"] = z
    rows = []
    for label, z in samples.items():
        if not np.all(np.isfinite(z)):
            raise FloatingPointError(f"{label}: non-finite samples")
        row = {"part": part, "method": label, **score(te_a, test["label"], z, num_classes)}
        row["idle_mass"] = idle.get(label, float("nan"))
        rows.append(row)
        if progress:
            print(
                f"  {part:9s} {label:34s} FD {row['frechet']:8.3f}  MMD {row['mmd']:.4f}  "
                f"P/R(k=3) {row['precision_k3']:.3f}/{row['recall_k3']:.3f}  classes {row['classes_hit']:.2f}  "
                f"H {row['label_entropy']:.2f}"
            )
    return rows, te_a, samples, tr_a


def train_synthetic(config, name: str, progress: bool):
    """Trains `name` on the synthetic views config; -> (config, state, views_fn, train, test)."""
    c = with_method(config.synthetic, name, config.method_tuning)
    state, step_fn, source, sharding = loop.setup(c)
    key = jax.random.key(c.seed)
    it = range(c.num_steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"synthetic {name}", leave=False, dynamic_ncols=True)
    for step in it:
        state, _ = loop.run_step(c, step_fn, state, loop.global_batch(source, c, step, sharding), key)
    d = c.data
    # Held-out points: fresh draws around the same cluster centres.
    test = synthetic.make_clustered(c.seed, config.num_heldout, d.dim, d.num_clusters, point_seed=1)
    return c, state, synthetic.views_for(d), source.arrays, test


def load_vision(config, name: str):
    """The report_vision run of `name` (trained now if missing) -> (config, state, views_fn, train, test)."""
    from gje_jax.data import images

    from . import report_vision

    module = report_vision.load_config_module(config.vision_config)
    c = report_vision.method_config(module, name, config.vision_size)
    workdir = os.path.join(config.vision_workdir, name)
    data = loop.load_data(c)
    source, views_fn, _ = data
    state, *_ = loop.setup(c, data=data)
    mngr = checkpoint.make_manager(workdir, keep=c.keep_checkpoints)
    if mngr.latest_step() != c.num_steps:
        mngr.close()
        state, _ = loop.train(c, workdir)
    else:
        state = checkpoint.restore_or_keep(mngr, state)
        mngr.close()
    test = images.load_split(c.data, c.data.test_split)
    train = source.arrays
    train = {k: v[: config.vision_train_embeddings] for k, v in train.items()}
    return c, state, views_fn, train, test, c.data.num_classes


def run(config, workdir: str, progress: bool = True, command: str | None = None) -> list[dict]:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    key = jax.random.key(config.seed)
    rows = []
    for part in config.parts:
        figures = {}
        for name in config.methods or methods.names():
            start = time.perf_counter()
            if part == "synthetic":
                c, state, views_fn, train, test = train_synthetic(config, name, progress)
                num_classes = c.data.num_clusters
            else:
                c, state, views_fn, train, test, num_classes = load_vision(config, name)
            k = config.posthoc_components[part]
            r, real, samples, tr_a = evaluate_method(
                part, c, state, views_fn, train, test, num_classes, key, progress, posthoc_k=k
            )
            for row in r:
                row["seconds"] = time.perf_counter() - start
            rows.extend(r)
            figures.update({label: (real, z) for label, z in samples.items()})
            if part != "synthetic":
                plot_nearest_images(samples, tr_a, train["image"], os.path.join(workdir, f"nearest_{name}.png"))
        plot_pca(figures, os.path.join(workdir, f"sampling_pca_{part}.png"), part)
    write_tables(rows, workdir, command or "python -m experiments.main --config=experiments/configs/sampling.py")
    return rows


_COLUMNS = [
    "part",
    "method",
    "frechet",
    "mmd",
    "precision_k3",
    "recall_k3",
    "precision_k5",
    "recall_k5",
    "classes_hit",
    "label_entropy",
    "idle_mass",
    "seconds",
]


def write_tables(rows, workdir: str, command: str) -> None:
    with open(os.path.join(workdir, "sampling_results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [
        f"Produced by `{command}`. {records.provenance()}",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    for r in rows:
        vals = [r["part"], r["method"]] + [
            "-" if np.isnan(r[c]) else f"{r[c]:.4g}" if c in ("frechet", "mmd") else f"{r[c]:.3f}"
            for c in _COLUMNS[2:-1]
        ]
        vals.append(f"{r['seconds']:.0f}")
        lines.append("| " + " | ".join(vals) + " |")
    lines += [
        "",
        "frechet: Frechet distance of Gaussian fits (lower is better); mmd: unbiased RBF MMD^2, median bandwidth "
        "(lower is better); precision / recall: k-NN-ball manifold precision and recall; classes_hit: fraction of "
        "classes that some sample's nearest real neighbour belongs to; label_entropy: entropy (nats) of those labels "
        "(log 10 = 2.303 or log 8 = 2.079 when even). 'own density': the method's learned density; 'post-hoc': "
        "fitted to its training embeddings afterwards; idle_mass: prior mass on components holding under 1% of the "
        "held-out responsibility (own mixtures of at most 64 components and the post-hoc GMM); seconds: training "
        "(or loading) plus scoring.",
    ]
    with open(os.path.join(workdir, "sampling_results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot_pca(figures: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(figures)
    cols = min(4, len(labels))
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax, label in zip(axes.ravel(), labels):
        real, z = figures[label]
        mu = real.mean(0)
        _, _, vt = np.linalg.svd(real[:5000] - mu, full_matrices=False)
        p_real, p_fake = (real - mu) @ vt[:2].T, (z - mu) @ vt[:2].T
        ax.scatter(p_real[:2000, 0], p_real[:2000, 1], s=2, c="0.6", label="real")
        ax.scatter(p_fake[:2000, 0], p_fake[:2000, 1], s=2, c="tab:red", alpha=0.5, label="samples")
        ax.set_title(label, fontsize=8)
    for ax in axes.ravel()[len(labels) :]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7, markerscale=4)
    fig.suptitle(f"{title}: real held-out embeddings and samples (2-D PCA of the real ones)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_nearest_images(samples: dict, train_emb: np.ndarray, train_images: np.ndarray, path: str, per_row=8):
    """One row per sample set: the nearest training images of its first samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(samples)
    fig, axes = plt.subplots(len(labels), per_row, figsize=(1.1 * per_row, 1.25 * len(labels)), squeeze=False)
    for i, label in enumerate(labels):
        z = samples[label][:per_row]
        d = np.sum(z**2, 1)[:, None] + np.sum(train_emb**2, 1)[None] - 2 * z @ train_emb.T
        nearest = np.argmin(d, axis=1)
        for j, idx in enumerate(nearest):
            axes[i, j].imshow(train_images[idx])
            axes[i, j].axis("off")
        axes[i, 0].set_title(label, fontsize=6, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
