"""Each timed alternative in experiments/benchmarks/choices.py computes the same function as
the form the kernels chose, so the benchmark compares like with like."""

import jax
import numpy as np
import pytest

from experiments.benchmarks import choices

SMALL = (64, 3, 8)  # (N, K, D): a few chunks' worth is not needed for equality
# Conv3x3 against nn.Conv, with the same weights, is tests/test_vision.py's test.
SAME_FUNCTION = [fn for fn, _, _ in choices.CHOICES if fn is not choices.conv3x3]


@pytest.mark.parametrize("fn", SAME_FUNCTION, ids=lambda f: f.__name__)
def test_alternative_computes_the_chosen_function(fn):
    chosen, alternative = fn(*SMALL)
    ours, alt = jax.tree.leaves(chosen()), jax.tree.leaves(alternative())
    assert len(ours) == len(alt)
    for a, b in zip(ours, alt):
        a, b = np.asarray(a), np.asarray(b)
        if fn is choices.gradient_layout:  # the same product, stored transposed
            b = b.T
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)
