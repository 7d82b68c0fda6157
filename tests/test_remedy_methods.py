"""The remedies as registered training methods: sharding equivalence of the loss, the
gradients and the stop-gradient state updates; checkpoint round trips; config errors."""

import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from gje_jax import methods
from gje_jax.train import config_check, loop
from tests.test_train import _config

# Stateful methods are found by their declared state (no names); variants beyond defaults.
STATEFUL = [
    n
    for n in methods.names()
    if jax.tree.leaves(jax.eval_shape(lambda k, n=n: methods.build({"name": n}).init(k, 3, 3)[1], jax.random.key(0)))
]
# Each stateful method, with a bank (if it has one) of one batch over capacity that resamples
# often (ESS threshold 0.9); then variants.
_BUSY = {"bank_size": 64, "ess_threshold": 0.9}
REMEDIES = [(n, {f"method.{k}": v for k, v in _BUSY.items() if k in methods.module(n).SETTINGS}) for n in STATEFUL] + [
    ("gmje_mdn", {}),
    ("gmje_mdn", {"method.mdn_covariance": "full"}),
    ("gmje_smc", {"method.bank_loss": "both", "method.bank_kernel": "predictive", "method.resampling": "residual"}),
]


def _three_steps(config, mesh):
    state, step_fn, source, sharding = loop.setup(config, mesh)
    key = jax.random.key(config.seed)
    out = []
    for step in range(3):
        state, metrics = step_fn(state, loop.global_batch(source, config, step, sharding), key)
        out.append(jax.device_get(metrics))
    return jax.device_get(state), out


@pytest.mark.parametrize("method,extra", REMEDIES)
def test_remedy_four_devices_equal_one_device(method, extra):
    config = _config(method, **extra)
    one, m1 = _three_steps(config, Mesh(np.asarray(jax.devices()[:1]), ("data",)))
    four, m4 = _three_steps(config, Mesh(np.asarray(jax.devices()[:4]), ("data",)))
    for a, b in zip(m1, m4):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=2e-4, err_msg=k)
    # Params after three optimiser steps and the method state (bank, graph, prototypes).
    for name in ("params", "method_state"):
        l1 = jax.tree_util.tree_leaves_with_path(getattr(one, name))
        l4 = jax.tree.leaves(getattr(four, name))
        for (path, a), b in zip(l1, l4):
            np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-4, err_msg=f"{name}{jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("method", STATEFUL)
def test_remedy_state_survives_checkpoint_resume(method, tmp_path, one_device):
    small_bank = {"method.bank_size": 64} if "bank_size" in methods.module(method).SETTINGS else {}
    config = _config(method, num_steps=6, checkpoint_every=3, **small_bank)
    straight, _ = loop.train(config, str(tmp_path), progress=False)
    # The same workdir resumed from its step-3 checkpoint (step 6 is moved aside) trains
    # steps 4-6 again from the restored state: one run fewer than a second workdir.
    with config.unlocked():
        config.resume_from_step = 3
    resumed, _ = loop.train(config, str(tmp_path), progress=False)
    assert int(resumed.step) == 6 and os.listdir(tmp_path / "checkpoints_discarded") == ["6"]
    for x, y in zip(jax.tree.leaves(resumed.method_state), jax.tree.leaves(straight.method_state)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=1e-5)
    for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
        np.testing.assert_allclose(x, y, atol=1e-5)


@pytest.mark.parametrize(
    "method,field,value,match",
    [
        ("gmje_smc", "method.bank_size", 32, "bank_size=32 is smaller than config.batch_size=64"),
        ("gmje_smc", "method.ess_threshold", 0.0, r"ess_threshold must be in \(0, 1\]"),
        ("gmje_smc", "method.ess_threshold", 1.5, r"ess_threshold must be in \(0, 1\]"),
        ("gmje_smc", "method.resampling", "sistematic", "method.resampling='sistematic' is unknown"),
        ("gmje_smc", "method.bank_loss", "nce", "bank_loss"),
        ("gmje_gng", "method.gng_capacity", 1, r"gng_capacity must be in \[2, inf\)"),
        ("gmje_gng", "method.gng_eps_b", 2.0, r"gng_eps_b must be in \[0, 1\]"),
        ("gmje_gng", "method.gng_covariance", "full", "gng_covariance"),
        ("gmje_mdn", "method.mdn_covariance", "tril", "mdn_covariance"),
        ("gmje_em", "method.em_momentum", 1.0, r"em_momentum must be in \[0, 1\)"),
        ("gmje_em", "method.pooled_shape", "diagonal", "method.pooled_shape='diagonal' is unknown"),
    ],
)
def test_bad_remedy_config_fails_before_compilation(method, field, value, match):
    with pytest.raises(ValueError, match=match):
        config_check.validate(_config(method, **{field: value}), num_devices=1)
