"""Index-based batching of in-memory datasets.

The batch of step s is a pure function of (seed, s): an epoch-wise permutation sliced
by step. A resumed run therefore sees exactly the batches it would have seen, and on
several hosts each process reads only its own slice of every global batch.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
    """Indices [batch_size] of the global batch at `step` (drop-remainder epochs).

    Example:
      >>> from gje_jax.data import batch_indices
      >>> idx = batch_indices(seed=0, step=5, num_examples=100, batch_size=8)
      >>> idx.shape, bool((batch_indices(0, 5, 100, 8) == idx).all())   # a function of (seed, step): resumable
      ((8,), True)
    """
    if batch_size > num_examples:
        raise ValueError(f"batch_size={batch_size} exceeds the dataset size {num_examples}.")
    per_epoch = num_examples // batch_size
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return perm[pos * batch_size : (pos + 1) * batch_size]


def local_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    """This process's rows of a global batch.

    Example:
      >>> from gje_jax.data import local_slice
      >>> local_slice(global_batch=256, process_index=1, process_count=4)
      slice(64, 128, None)
    """
    if global_batch % process_count:
        raise ValueError(f"batch_size={global_batch} must be divisible by the number of processes {process_count}.")
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)


@dataclasses.dataclass
class ArraySource:
    """A dict of equally long numpy arrays, batched by index.

    process_local: the arrays are this process's share of the data (not the whole
    dataset), so batches are drawn within it.

    Example:
      >>> from gje_jax.data import ArraySource
      >>> src = ArraySource({"x": np.arange(10.0)[:, None], "label": np.arange(10)})
      >>> src.get(np.array([3, 1]))["label"].tolist()
      [3, 1]
    """

    arrays: dict[str, np.ndarray]
    process_local: bool = False

    def __post_init__(self):
        lengths = {k: len(v) for k, v in self.arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays must have the same length, got {lengths}.")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def get(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[idx] for k, v in self.arrays.items()}
