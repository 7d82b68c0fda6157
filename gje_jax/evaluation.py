"""Evaluation of frozen features: weighted kNN and the offline linear probe.

Both take features as arrays, so they serve any encoder: `embed` computes them for a
trained network in fixed-size jitted batches.

Example:
    tr = embed(fn, train_images); te = embed(fn, test_images)
    knn_accuracy(tr, train_labels, te, test_labels, num_classes=10, k=200, temperature=0.1)
    linear_probe(tr, train_labels, te, test_labels, num_classes=10)["test_accuracy"]
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def embed(fn: Callable, images: np.ndarray, batch_size: int = 500, progress: bool = False) -> np.ndarray:
    """Applies fn (images [b, ...] -> features [b, F]) in batches of batch_size (the last one
    padded, so fn compiles once). Returns float32 [N, F] on the host.

    Example:
      >>> feats = gje_jax.evaluation.embed(lambda x: x.reshape(len(x), -1)[:, :3], np.zeros((7, 4, 4, 3), np.uint8), batch_size=4)
      >>> feats.shape                                              # padded to fixed-size batches, then trimmed
      (7, 3)
    """
    jfn = jax.jit(fn)
    n = len(images)
    out = []
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="embedding", leave=False)
    for s in starts:
        chunk = images[s : s + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out.append(np.asarray(jfn(chunk))[: batch_size - pad])
    return np.concatenate(out).astype(np.float32)


def _l2_normalize(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_scores(train, train_labels, queries, *, k: int, temperature: float, num_classes: int):
    sims = queries @ train.T  # [q, N]
    top, idx = jax.lax.top_k(sims, k)  # [q, k]
    weights = jnp.exp(top / temperature)
    onehot = jax.nn.one_hot(train_labels[idx], num_classes, dtype=jnp.float32)  # [q, k, C]
    return jnp.einsum("qk,qkc->qc", weights, onehot)


def knn_predict(
    train_features,
    train_labels,
    query_features,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 256,
) -> np.ndarray:
    """Weighted kNN with cosine similarity (Wu et al. 2018): each of the k most similar
    training points votes for its label with weight exp(sim / temperature).

    train_features [N, F], train_labels int [N], query_features [Q, F] -> int32 [Q].
    Memory is O(chunk * N): queries are processed `chunk` at a time.

    Example:
      >>> train, labels = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])
      >>> gje_jax.evaluation.knn_predict(train, labels, np.array([[0.9, 0.1], [0.2, 0.8]]), num_classes=2, k=1).tolist()
      [0, 1]
    """
    train_features = np.asarray(train_features, np.float32)
    query_features = np.asarray(query_features, np.float32)
    if train_features.ndim != 2 or query_features.ndim != 2 or train_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            f"knn_predict needs train_features [N, F] and query_features [Q, F], got {train_features.shape} "
            f"and {query_features.shape}."
        )
    if not 0 < k <= len(train_features):
        raise ValueError(f"k={k} must be in [1, {len(train_features)}] (the number of training points).")
    train = _l2_normalize(jnp.asarray(train_features))
    labels = jnp.asarray(train_labels, jnp.int32)
    preds = []
    for s in range(0, len(query_features), chunk):
        q = _l2_normalize(jnp.asarray(query_features[s : s + chunk]))
        scores = _knn_scores(train, labels, q, k=k, temperature=temperature, num_classes=num_classes)
        preds.append(np.asarray(jnp.argmax(scores, axis=-1), np.int32))
    return np.concatenate(preds)


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int, k=200, temperature=0.1):
    """Top-1 accuracy (a float in [0, 1]) of knn_predict on the test set.

    Example:
      >>> train = np.eye(2)[np.repeat([0, 1], 10)] + 0.01
      >>> labels = np.repeat([0, 1], 10)
      >>> gje_jax.evaluation.knn_accuracy(train, labels, train, labels, num_classes=2, k=5)
      1.0
    """
    pred = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return float(np.mean(pred == np.asarray(test_labels)))


def linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 1024,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> dict:
    """Multinomial logistic regression on standardised frozen features.

    Features are standardised with the training set's mean and std; the classifier is
    trained with Adam (cosine decay of lr over `epochs`, L2 penalty weight_decay/2 ||W||^2
    added to the mean cross-entropy) and evaluated once, after the final epoch: there is no
    selection on the test set. Each epoch is one lax.scan over shuffled full batches.

    Returns {'train_accuracy', 'test_accuracy', 'train_loss'} (floats) and 'predict',
    a function features [n, F] -> labels [n].

    Example:
      >>> x = np.random.default_rng(0).normal(size=(200, 5)).astype(np.float32)
      >>> y = (x[:, 0] > 0).astype(np.int32)                       # linearly separable
      >>> result = gje_jax.evaluation.linear_probe(x, y, x, y, num_classes=2, epochs=100)
      >>> result["test_accuracy"] > 0.9
      True
    """
    x = np.asarray(train_features, np.float32)
    xt = np.asarray(test_features, np.float32)
    y = np.asarray(train_labels, np.int32)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, xt = (x - mu) / sd, (xt - mu) / sd
    n, f = x.shape
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size
    sched = optax.cosine_decay_schedule(lr, epochs * steps_per_epoch)
    tx = optax.adam(sched)
    params = {"w": jnp.zeros((f, num_classes)), "b": jnp.zeros((num_classes,))}
    opt_state = tx.init(params)
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def loss_fn(p, xb, yb):
        logits = xb @ p["w"] + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return ce + 0.5 * weight_decay * jnp.sum(p["w"] ** 2)

    @jax.jit
    def epoch(carry, key):
        def step(c, idx):
            p, o = c
            g = jax.grad(loss_fn)(p, xj[idx], yj[idx])
            updates, o = tx.update(g, o, p)
            return (optax.apply_updates(p, updates), o), None

        perm = jax.random.permutation(key, n)[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
        carry, _ = jax.lax.scan(step, carry, perm)
        return carry

    carry = (params, opt_state)
    for key in jax.random.split(jax.random.key(seed), epochs):
        carry = epoch(carry, key)
    params = carry[0]

    def predict(feats):
        z = (np.asarray(feats, np.float32) - mu) / sd
        return np.asarray(jnp.argmax(jnp.asarray(z) @ params["w"] + params["b"], axis=-1), np.int32)

    return {
        "train_accuracy": float(np.mean(predict(train_features) == y)),
        "test_accuracy": float(np.mean(predict(test_features) == np.asarray(test_labels))),
        "train_loss": float(loss_fn(params, xj, yj)),
        "predict": predict,
    }
