"""What every registered method must do, checked without naming any: the loss and its
gradients on 4 devices equal 1 device, a few training steps stay finite, a checkpoint
restores the state bitwise, and the config refuses settings the method does not have.

A method added to gje_jax.methods.REGISTRY is picked up here on its own; the last test
adds a toy method from a test module the way README's "Adding a method" says and runs the
same checks on it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from gje_jax import methods
from gje_jax.train import checkpoint, config_check, loop
from tests.helpers import loss_and_grads, train_config


def check_four_devices_equal_one_device(config):
    one = loss_and_grads(config, Mesh(np.asarray(jax.devices()[:1]), ("data",)))
    four = loss_and_grads(config, Mesh(np.asarray(jax.devices()[:4]), ("data",)))
    assert np.isfinite(one[0])
    np.testing.assert_allclose(four[0], one[0], rtol=1e-5, atol=1e-5)
    for (path, g1), g4 in zip(jax.tree_util.tree_leaves_with_path(one[1]), jax.tree.leaves(four[1])):
        assert np.all(np.isfinite(g1)), jax.tree_util.keystr(path)
        np.testing.assert_allclose(g4, g1, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def check_trains_and_restores(config, workdir):
    state, last = loop.train(config, workdir, progress=False)
    assert int(state.step) == config.num_steps
    assert all(np.isfinite(v) for k, v in last.items() if isinstance(v, float)), last
    # The newest checkpoint, read back into a zeroed state of the same structure.
    mngr = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
    blank = jax.tree.map(jnp.zeros_like, state)
    back = checkpoint.restore_or_keep(mngr, blank)
    mngr.close()
    assert int(back.step) == config.num_steps
    for name in ("params", "opt_state", "batch_stats", "method_state"):
        saved = jax.tree_util.tree_leaves_with_path(getattr(state, name))
        restored = jax.tree.leaves(getattr(back, name))
        assert len(saved) == len(restored), name
        for (path, a), b in zip(saved, restored):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=f"{name}{jax.tree_util.keystr(path)}")
    method = methods.build(config.method, config)
    if method.density is not None:
        d = method.density(back.params["method"], back.method_state)
        assert np.all(np.isfinite(np.asarray(d.means)))


def check_refuses_foreign_settings(name):
    config = train_config(name)
    specs = methods.module(name).SETTINGS
    with config.unlocked():
        config.method.not_a_setting = 1.0
    with pytest.raises(ValueError, match=rf"config\.method\.not_a_setting is not a setting of method '{name}'"):
        config_check.validate(config)
    for k, spec in specs.items():  # every numeric setting refuses NaN, naming itself
        if spec.kind in ("float", "int"):
            bad = train_config(name, **{f"method.{k}": float("nan") if spec.kind == "float" else -(10**9)})
            with pytest.raises(ValueError, match=rf"config\.method\.{k} "):
                config_check.validate(bad)


@pytest.mark.parametrize("name", methods.names())
def test_four_devices_equal_one_device(name):
    check_four_devices_equal_one_device(train_config(name))


@pytest.mark.parametrize("name", methods.names())
def test_trains_a_few_steps_and_restores_bitwise(name, tmp_path, one_device):
    check_trains_and_restores(train_config(name, num_steps=4, log_every=2, checkpoint_every=2), str(tmp_path))


@pytest.mark.parametrize("name", methods.names())
def test_refuses_settings_it_does_not_have(name):
    check_refuses_foreign_settings(name)


def test_every_method_declares_its_parts():
    for name in methods.names():
        mod = methods.module(name)
        assert isinstance(mod.TITLE, str) and mod.SETTINGS and mod.__doc__, name
        assert set(mod.SMOKE) <= set(mod.SETTINGS) and set(mod.IDENTITY) <= set(mod.SETTINGS), name
        assert all(s.doc for s in mod.SETTINGS.values()), name
        method = methods.build(methods.default_settings(name))
        assert method.name == name
        params, state = jax.eval_shape(lambda k, m=method: m.init(k, 3, 3), jax.random.key(0))
        emb = methods.Embeddings(*(jnp.zeros((8, 3)),) * 4)
        loss, metrics = jax.eval_shape(lambda p, s, m=method: m.loss(p, s, emb), params, state)
        assert loss.shape == () and "loss" in metrics, name


def test_a_toy_method_added_from_a_test_module_passes_the_generic_checks(monkeypatch, tmp_path, one_device):
    monkeypatch.setitem(methods.REGISTRY, "toy", "tests.toy_method")  # the one registry line
    assert "toy" in methods.names()
    check_refuses_foreign_settings("toy")
    check_four_devices_equal_one_device(train_config("toy"))
    check_trains_and_restores(train_config("toy", num_steps=4, log_every=2, checkpoint_every=2), str(tmp_path))
