"""Training system: sharding equivalence, resume, determinism, config errors, models."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from gje_jax import methods, models
from gje_jax.train import checkpoint, config_check, loop
from gje_jax.train.step import loss_and_updates, train_step
from tests.helpers import loss_and_grads, train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_config = train_config


_loss_and_grads = loss_and_grads


# Variants beyond each registered method's defaults (those run in test_methods_generic.py).
@pytest.mark.parametrize(
    "method,extra",
    [
        ("gje", {"method.estimator": "ema"}),
        ("gje", {"method.estimator": "param"}),
        ("predictor", {"method.predictor_norm": "bn"}),
        ("gje", {"model.norm": "bn", "model.projector": "bn", "model.embed_dim": 4}),
    ],
)
def test_four_devices_equal_one_device(method, extra):
    assert jax.device_count() >= 4, "conftest sets 4 CPU devices"
    config = _config(method, **extra)
    one = _loss_and_grads(config, Mesh(np.asarray(jax.devices()[:1]), ("data",)))
    four = _loss_and_grads(config, Mesh(np.asarray(jax.devices()[:4]), ("data",)))
    np.testing.assert_allclose(four[0], one[0], rtol=1e-5, atol=1e-5)
    for g4, g1 in zip(jax.tree.leaves(four[1]), jax.tree.leaves(one[1])):
        np.testing.assert_allclose(g4, g1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["bn", "ln"])
def test_batch_norm_predictor_uses_the_current_batch_statistics(norm):
    # A batch-norm after the head's first Dense removes any shift shared by the whole batch,
    # so the loss cannot change when every online embedding moves by one vector (running
    # averages would not remove it); a layer-norm head has no such invariance.
    m = _config("predictor", **{"method.predictor_norm": norm}).method
    method = methods.build(m)
    params, state = method.init(jax.random.key(0), 8, 8)
    assert state == {}  # nothing to carry: the head never reads running averages
    rng = np.random.default_rng(0)
    a, b, at, bt = (jnp.asarray(rng.normal(size=(32, 8)), jnp.float32) for _ in range(4))
    shift = jnp.asarray(rng.normal(size=(8,)) * 3, jnp.float32)
    base, _ = method.loss(params, state, methods.Embeddings(a, b, at, bt))
    moved, _ = method.loss(params, state, methods.Embeddings(a + shift, b + shift, at, bt))
    if norm == "bn":
        np.testing.assert_allclose(float(moved), float(base), rtol=1e-5)
    else:
        assert abs(float(moved) - float(base)) > 1e-3


def test_resume_matches_uninterrupted_run(tmp_path):
    config = _config("gje", **{"method.estimator": "ema", "num_steps": 12, "checkpoint_every": 6})
    straight, _ = loop.train(config, str(tmp_path / "a"), progress=False)
    loop.train(config, str(tmp_path / "b"), progress=False, stop_after=6)
    resumed, _ = loop.train(config, str(tmp_path / "b"), progress=False)
    assert int(resumed.step) == 12
    for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
        np.testing.assert_allclose(x, y, atol=1e-6)
    for x, y in zip(jax.tree.leaves(resumed.method_state), jax.tree.leaves(straight.method_state)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_a_restored_state_reuses_the_compiled_step(tmp_path):
    """Restoring keeps every leaf's placement and type, so a resumed run's step is the program
    the fresh run compiled (an uncommitted divergence record and a weakly typed fresh step
    counter each made it a second program)."""
    config = _config("gje")
    state, step_fn, source, sharding = loop.setup(config)
    batch = loop.global_batch(source, config, 0, sharding)
    state, _ = step_fn(state, batch, jax.random.key(0))
    mngr = checkpoint.make_manager(str(tmp_path))
    checkpoint.save(mngr, 1, state)
    mngr.wait_until_finished()
    restored = checkpoint.restore_or_keep(mngr, state)
    mngr.close()
    assert int(restored.step) == 1 and int(restored.diverged_at) == -1
    step_fn(restored, batch, jax.random.key(1))
    assert step_fn._cache_size() == 1


def test_same_seed_gives_identical_metrics(tmp_path, one_device):
    config = _config("gmje", num_steps=5, log_every=1)
    loop.train(config, str(tmp_path / "a"), progress=False)
    loop.train(config, str(tmp_path / "b"), progress=False)
    read = lambda d: [json.loads(l) for l in open(tmp_path / d / "metrics.jsonl")]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "examples_per_s"} for r in rows]
    assert strip(read("a")) == strip(read("b"))


def test_unknown_key_and_bad_values_fail_clearly():
    config = _config()
    with pytest.raises(AttributeError, match="lr"):
        config.optim.lrr = 1.0  # locked ConfigDicts refuse new keys
    for field, value, match in [
        ("method.name", "gjee", "valid methods"),
        ("optim.lr", -1.0, "config.optim.lr"),
        ("batch_size", 63, "divisible"),
        ("method.estimator", "batc", "estimator"),
        ("method.momentum", 1.5, "config.method.momentum"),
    ]:
        bad = _config(**{field: value})
        with pytest.raises(ValueError, match=match):
            config_check.validate(bad, num_devices=4)


def test_cli_rejects_unknown_override(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.main",
            "--config=experiments/configs/synthetic_views.py:runlocal",
            f"--workdir={tmp_path}",
            "--config.optim.lrr=3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "lrr" in out.stderr


@pytest.mark.parametrize("user_value", [None, "2"])
def test_entry_point_loads_openblas_single_threaded_unless_told(user_value):
    """experiments.main sets OPENBLAS_NUM_THREADS=1 before OpenBLAS loads (its spinning threads
    slow CPU training steps) and keeps a value the user set; read back from the loaded
    libraries by threadpoolctl."""
    code = (
        "import experiments.main, scipy.linalg\n"
        "from threadpoolctl import threadpool_info\n"
        "print(sorted({p['num_threads'] for p in threadpool_info() if p['internal_api'] == 'openblas'}))"
    )
    if user_value and (os.cpu_count() or 1) < int(user_value):
        pytest.skip("OpenBLAS may cap its thread count at the number of cores")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if user_value:
        env["OPENBLAS_NUM_THREADS"] = user_value
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"[{user_value or 1}]"


def test_workdir_of_another_method_is_refused_untouched(tmp_path):
    loop.train(_config("gje", num_steps=2, log_every=1), str(tmp_path), progress=False)
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(checkpoint.CheckpointError, match="method.name"):
        loop.train(_config("gmje", num_steps=4), str(tmp_path), progress=False)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


@pytest.mark.parametrize("projector", ["bn", "ln"])
def test_target_network_with_the_online_weights_gives_the_online_embeddings(projector):
    # At step 0 the EMA target holds the online weights; normalised the same way (the current
    # batch's statistics when there is batch-norm), it must produce the same embeddings.
    norm = "bn" if projector == "bn" else "ln"
    config = _config("predictor", **{"model.projector": projector, "model.embed_dim": 4, "model.norm": norm})
    state, _, source, sharding = loop.setup(config)
    batch = loop.global_batch(source, config, 0, sharding)
    a, b = loop.synthetic.views_for(config.data)(batch, jax.random.key(3))
    method = methods.build(config.method)
    _, (_, _, emb) = jax.jit(loss_and_updates, static_argnames="method")(state.params, state, a, b, method=method)
    assert bool(jax.tree.leaves(state.batch_stats)) == (projector == "bn")
    np.testing.assert_allclose(emb.context_ema, emb.context, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(emb.target_ema, emb.target, rtol=1e-5, atol=1e-5)


def test_model_field_added_after_a_run_keeps_it_resumable(tmp_path, one_device):
    loop.train(_config("gje", num_steps=2, log_every=1), str(tmp_path), progress=False)
    # A run written before `model.projector_out_norm` existed: its config.json lacks the key.
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    del saved["model"]["projector_out_norm"]
    with open(tmp_path / "config.json", "w") as f:
        json.dump(saved, f)
    state, _ = loop.train(_config("gje", num_steps=4, log_every=1), str(tmp_path), progress=False)
    assert int(state.step) == 4
    # A model field the old run does hold still guards its identity.
    with pytest.raises(checkpoint.CheckpointError, match="config.model"):
        loop.train(_config("gje", num_steps=6, **{"model.hidden": (48,)}), str(tmp_path), progress=False)


def test_projector_out_norm_standardises_each_embedding_dimension():
    # Layer-norm hidden layers: train and eval mode differ only in the output layer.
    m = models.model_config("mlp", hidden=(32,), feature_dim=8, projector="ln", projector_out_norm=True, embed_dim=4)
    net = models.build_network(m)
    x = 3.0 + 5.0 * jax.random.normal(jax.random.key(0), (64, 8))
    variables = net.init(jax.random.key(1), x, train=False)
    out, updates = net.apply(variables, x, train=True, mutable=["batch_stats"])
    # Training mode: batch statistics, no affine part, so mean 0 and variance 1 per dimension
    # (up to BatchNorm's epsilon of 1e-5 in the variance).
    np.testing.assert_allclose(np.mean(out, axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.var(out, axis=0), 1.0, rtol=1e-3)
    assert "scale" not in variables["params"]["projector"].get("out_norm", {})
    # Evaluation: the running averages (here after one update: 0.9 * init + 0.1 * batch).
    raw = net.apply(variables, x, train=False)  # running mean 0, var 1 at init: the raw output
    pre = np.asarray(net.apply({**variables, "batch_stats": updates["batch_stats"]}, x, train=False))
    mean, var = np.mean(np.asarray(raw), 0), np.var(np.asarray(raw), 0)
    expect = (np.asarray(raw) - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var + 1e-5)
    np.testing.assert_allclose(pre, expect, rtol=1e-4, atol=1e-5)


def test_incompatible_checkpoint_gives_clear_error(tmp_path):
    loop.train(_config("gje", num_steps=2, log_every=1), str(tmp_path), progress=False)
    # Hide the identity check (a config.json without the model section; a missing file is
    # refused on its own now): the restore itself must fail clearly.
    recorded = json.loads((tmp_path / "config.json").read_text())
    del recorded["model"]
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    with pytest.raises(checkpoint.CheckpointError, match="different config"):
        loop.train(_config("gje", num_steps=4, **{"model.hidden": (48,)}), str(tmp_path), progress=False)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=experiments/configs/synthetic_views.py:runlocal",
        f"--workdir={tmp_path}",
        "--config.num_steps=100000",
        "--config.checkpoint_every=100000",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(tmp_path / "metrics.jsonl"):
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "Interrupted: saved step" in out
    steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
    assert steps and max(steps) > 0


@pytest.mark.parametrize(
    "encoder,extra,projector",
    [
        ("mlp", {}, "bn"),
        ("mlp", {}, "ln"),
        ("convnet_small", {"widths": (8, 16)}, "ln"),
        ("resnet18", {"stem": "cifar", "width": 8}, "bn"),
        ("resnet18", {"stem": "imagenet", "width": 8}, "bn"),
        ("resnet50", {"stem": "cifar", "width": 4}, "bn"),
        ("mlp", {"dtype": "bfloat16"}, "bn"),
    ],
)
def test_models_forward_backward(encoder, extra, projector):
    if encoder == "mlp":
        extra = {"hidden": (32,), "feature_dim": 8, **extra}
    m = models.model_config(encoder, projector=projector, embed_dim=4, **extra)
    net = models.build_network(m)
    x = jnp.ones((2, 32, 32, 3)) if encoder != "mlp" else jnp.ones((2, 8))

    # ResNet-50 is traced, not compiled (its compilation alone took ~40 s of the suite): the
    # trace checks every shape of the forward and backward pass; the ResNet-18 cases run the
    # same stem, pooling and projector numerically.
    def run(fn, *args):
        return jax.eval_shape(fn, *args) if encoder == "resnet50" else jax.jit(fn)(*args)

    # Jitted init and gradient: one compilation is cheaper than dispatching a ResNet's ops one by one.
    variables = run(lambda k, x: net.init(k, x, train=False), jax.random.key(0), x)

    def f(params, rest):
        out, _ = net.apply({**rest, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(out**2), out

    rest = {k: v for k, v in variables.items() if k != "params"}
    (val, out), grads = run(jax.value_and_grad(f, has_aux=True), variables["params"], rest)
    assert out.shape == (2, m.embed_dim)
    if encoder == "resnet50":
        assert jax.tree.map(lambda g: g.shape, grads) == jax.tree.map(lambda p: p.shape, variables["params"])
        return
    assert np.isfinite(val) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


_TWO_PROCESS = r"""
import os, sys, json
sys.path.insert(0, os.getcwd())
from tests.helpers import xla_flags
os.environ["XLA_FLAGS"] = xla_flags(devices=2)
import jax, numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
from tests.test_train import _config, _loss_and_grads
from jax.sharding import Mesh
loss, grads = _loss_and_grads(_config("gje"), Mesh(np.asarray(jax.devices()), ("data",)))
if pid == 0:
    json.dump({"loss": float(loss), "grads": [np.asarray(g).tolist() for g in jax.tree.leaves(grads)]}, open(out, "w"))
jax.distributed.shutdown()
"""


def test_two_processes_match_one_process(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_TWO_PROCESS)
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), str(port), str(out)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    got = json.load(open(out))
    loss, grads = _loss_and_grads(_config("gje"), Mesh(np.asarray(jax.devices()[:1]), ("data",)))
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-5, atol=1e-5)
    for g2, g1 in zip(got["grads"], jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(g2), g1, rtol=1e-5, atol=1e-5)


def _restore_params(config, workdir):
    state, *_ = loop.setup(config, Mesh(np.asarray(jax.devices()[:1]), ("data",)))
    mngr = checkpoint.make_manager(workdir)
    restored = checkpoint.restore_or_keep(mngr, state)
    mngr.close()
    return restored


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    overrides = ["--config.num_steps=40", "--config.checkpoint_every=5", "--config.method.estimator=ema"]
    base = [sys.executable, "-m", "experiments.main", "--config=experiments/configs/synthetic_views.py:runlocal"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*base, f"--workdir={killed}", *overrides], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpts = (
            [int(s) for s in os.listdir(killed / "checkpoints") if s.isdigit()]
            if (killed / "checkpoints").exists()
            else []
        )
        if ckpts and max(ckpts) >= 10 or proc.poll() is not None:
            break
        time.sleep(0.05)
    # A random moment after step 10's checkpoint (one is written every 5 steps): the kill
    # lands between steps or inside a save, depending on timing.
    time.sleep(np.random.default_rng().uniform(0.0, 0.5))
    proc.kill()  # SIGKILL: no chance to save
    proc.wait()
    subprocess.run([*base, f"--workdir={killed}", *overrides], cwd=ROOT, check=True, capture_output=True, timeout=300)
    # The uninterrupted reference runs in this process: the same config, one start-up less.
    straight = tmp_path / "straight"
    config = _config("gje", num_steps=40, checkpoint_every=5, **{"method.estimator": "ema"})
    loop.train(config, str(straight), progress=False)
    a, b = _restore_params(config, str(killed)), _restore_params(config, str(straight))
    assert int(a.step) == int(b.step) == 40
    for x, y in zip(jax.tree.leaves((a.params, a.method_state)), jax.tree.leaves((b.params, b.method_state))):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_truncated_checkpoint_gives_clear_error_and_is_left_alone(tmp_path):
    config = _config("gje", num_steps=2, log_every=1, checkpoint_every=2)
    loop.train(config, str(tmp_path), progress=False)
    step_dir = tmp_path / "checkpoints" / "2"
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0 and "metadata" not in p.name]
    assert files
    for p in files:  # truncate every data file to half its size
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    snapshot = {p: p.read_bytes() for p in step_dir.rglob("*") if p.is_file()}
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        loop.train(_config("gje", num_steps=4, log_every=1), str(tmp_path), progress=False)
    assert {p: p.read_bytes() for p in step_dir.rglob("*") if p.is_file()} == snapshot


def test_interrupted_save_leaves_previous_checkpoint_usable(tmp_path, one_device):
    """A save killed midway leaves orbax's unfinalised temporary directory; resume must
    ignore it, restart from the last complete step and end where an uninterrupted run ends."""
    config = _config("gje", num_steps=4, log_every=1, checkpoint_every=2)
    straight, _ = loop.train(config, str(tmp_path / "straight"), progress=False)
    work = tmp_path / "interrupted"
    loop.train(config, str(work), progress=False, stop_after=2)
    partial = work / "checkpoints" / "4.orbax-checkpoint-tmp-1234567"
    shutil.copytree(work / "checkpoints" / "2", partial)
    for p in partial.rglob("*"):
        if p.is_file():
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    mngr = checkpoint.make_manager(str(work))
    assert mngr.latest_step() == 2
    mngr.close()
    resumed, _ = loop.train(config, str(work), progress=False)
    assert int(resumed.step) == 4
    for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_the_train_step_is_traced_once_over_steps(one_device):
    # A retrace per step (a Python value that changes, a weak type that flips) would compile
    # the step again every step; chex counts the traces of the wrapped step.
    import chex

    config = _config("gmje_smc", num_steps=3)
    state, _, source, sharding = loop.setup(config)
    method = methods.build(config.method, config)
    views_fn = loop.synthetic.views_for(config.data)

    @chex.assert_max_traces(n=1)
    def step(state, batch, key):
        return train_step(state, batch, key, method=method, views_fn=views_fn)

    jitted = jax.jit(step)
    for i in range(3):
        state, metrics = jitted(state, loop.global_batch(source, config, i, sharding), jax.random.key(0))
    assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))
    chex.clear_trace_counter()


# (method, field, value, what the message must name). Each fails in config_check.validate,
# before anything is compiled; the closing note of the redesign lists them.
_INVALID_SETTINGS = [
    ("gje", "method.tau", 0.2, r"config\.method\.tau is not a setting of method 'gje'"),
    ("gje", "method.momentum", 0.5, r"config\.method\.momentum=0\.5 has no effect.*estimator='ema'"),
    ("gje", "method.floor", 0.01, r"config\.method\.floor=0\.01 has no effect.*estimator='param'"),
    ("gje", "method.lambda_geo", float("nan"), r"config\.method\.lambda_geo must be finite"),
    ("gje", "method.eps_rel", -1.0, r"config\.method\.eps_rel must be in \[0, inf\)"),
    ("gmje", "method.num_components", 0, r"config\.method\.num_components must be in \[1, inf\)"),
    ("gmje_smc", "method.bank_bandwidth", 0.2, r"config\.method\.bank_bandwidth=0\.2 has no effect"),
    ("gmje_smc", "method.tau", 0.2, r"config\.method\.tau=0\.2 has no effect.*bank_loss"),
    ("gmje_smc", "method.ess_threshold", 0.0, r"config\.method\.ess_threshold must be in \(0, 1\]"),
    ("gmje_em", "method.pooled_shape", "covariance", r"config\.method\.pooled_shape='covariance' has no effect"),
    ("gmje_mdn", "method.momentum", 0.5, r"config\.method\.momentum=0\.5 has no effect.*pooled_eps_rel"),
    ("gmje_mdn", "method.mdn_hidden", (16, 0), r"config\.method\.mdn_hidden must be a tuple of positive"),
    ("simclr", "method.tau", float("inf"), r"config\.method\.tau must be finite"),
    ("simclr", "method.tau", 0.0, r"config\.method\.tau must be in \(0, inf\)"),
    ("simclr", "method.num_components", 8, r"config\.method\.num_components is not a setting of method 'simclr'"),
    ("vicreg", "method.vicreg_sim", float("nan"), r"config\.method\.vicreg_sim must be finite"),
    ("barlow_twins", "method.lambda_offdiag", -1.0, r"config\.method\.lambda_offdiag must be in \[0, inf\)"),
    ("predictor", "method.target_momentum", 1.0, r"config\.method\.target_momentum must be in \[0, 1\)"),
    ("gje", "model.embed_dim", 16, r"config\.model\.embed_dim=16 has no effect.*projector"),
    ("gje", "model.projector_hidden", (64,), r"config\.model\.projector_hidden=\(64,\) has no effect"),
    ("gje", "model.widths", (8, 16), r"config\.model\.widths is not a setting of the model with encoder 'mlp'"),
    ("gje", "model.projector", "bn", r"config\.model\.embed_dim must be set"),
    ("gje", "model.hidden", (0,), r"config\.model\.hidden must be a tuple of positive"),
    ("gje", "model.feature_dim", -1, r"config\.model\.feature_dim must be in \[1, inf\)"),
    ("gje", "optim.momentum", 0.5, r"config\.optim\.momentum=0\.5 has no effect.*'lars' or 'sgd'"),
    ("gje", "optim.lr", float("nan"), r"config\.optim\.lr must be finite"),
    ("gje", "optim.lr", float("inf"), r"config\.optim\.lr must be finite"),
    ("gje", "optim.grad_clip", float("nan"), r"config\.optim\.grad_clip must be finite"),
    ("gje", "optim.warmup_steps", -1, r"config\.optim\.warmup_steps must be in \[0, inf\)"),
    ("gje", "optim.schedule", "linear", r"config\.optim\.schedule='linear' is unknown"),
    ("gje", "seed", -1, r"config\.seed must be in \[0, inf\)"),
    ("gje", "batch_size", 0, r"config\.batch_size must be in \[1, inf\)"),
    ("gje", "keep_checkpoints", 0, r"config\.keep_checkpoints must be in \[1, inf\)"),
    ("gje", "data.noise", float("nan"), r"config\.data\.noise must be a non-negative number"),
    ("gje", "epochs", 10, r"config\.epochs is not a setting of a train config"),
    ("gje", "method.name", "gjee", r"config\.method\.name='gjee' is unknown; valid methods"),
]


@pytest.mark.parametrize("method,field,value,match", _INVALID_SETTINGS)
def test_invalid_or_no_effect_settings_fail_before_compilation(method, field, value, match):
    config = _config(method)
    *parents, leaf = field.split(".")
    with config.unlocked():
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    with pytest.raises(ValueError, match=match):
        config_check.validate(config)


def test_a_cli_override_of_a_field_the_method_does_not_have_fails(tmp_path):
    # synthetic_views.py:gje holds GJE's settings only; simclr's temperature is not one.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.main",
            "--config=experiments/configs/synthetic_views.py:gje,runlocal",
            f"--workdir={tmp_path}",
            "--config.method.tau=0.2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "tau" in out.stderr and not os.path.exists(tmp_path / "checkpoints")


def test_method_lr_scale_multiplies_only_the_methods_updates(one_device):
    # SGD at a constant rate without clipping or decay (its schedule's first update is at
    # rate 0, so two steps, both from the initial parameters): the prototypes move lr_scale
    # times as far as at lr_scale=1, the encoder as far, and the Cholesky factors (raw)
    # lr_scale x cov_lr_scale times as far.
    import numpy as np

    from gje_jax import methods
    from gje_jax.train import loop
    from gje_jax.train.configs import smoke_config

    moves = {}
    # Two runs (each compiles its step); the float form of lr_scale is the doctest's.
    runs = {"base": {}, "x4_cov": {"lr_scale": 4.0, "cov_lr_scale": 0.5}}
    for name, tuning in runs.items():
        c = smoke_config("gmje").unlock()
        c.method = methods.tuned("gmje", smoke=True, **tuning)
        c.optim.update(name="sgd", lr=0.05, weight_decay=0.0, warmup_steps=0, schedule="constant", grad_clip=0.0)
        state, step_fn, source, sharding = loop.setup(c)
        before = jax.tree.map(np.asarray, state.params)
        for step in range(2):
            batch = loop.global_batch(source, c, step, sharding)
            state, _ = loop.run_step(c, step_fn, state, batch, jax.random.key(step))
        moves[name] = jax.tree.map(lambda a, b: np.asarray(a) - b, state.params, before)
    want = {"x4_cov": {"encoder": 1.0, "means": 4.0, "raw": 2.0}}
    for name, factors in want.items():
        for part, factor in factors.items():
            got, ref = (
                (moves[name]["encoder"], moves["base"]["encoder"])
                if part == "encoder"
                else (moves[name]["method"][part], moves["base"]["method"][part])
            )
            for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
                np.testing.assert_allclose(g, factor * r, rtol=1e-4, atol=2e-6)  # float32 differences of O(1) params
    assert np.abs(moves["base"]["method"]["means"]).max() > 0
    assert np.abs(moves["base"]["method"]["raw"]).max() > 0


def test_scale_method_lr_rejects_a_part_the_method_does_not_hold():
    import optax

    from gje_jax.train.optim import scale_method_lr

    tx = scale_method_lr(optax.sgd(0.1), {"prototypes": 2.0})
    with pytest.raises(ValueError, match="prototypes.*does not hold"):
        tx.init({"encoder": jnp.ones(2), "method": {"means": jnp.ones(2)}})
    with pytest.raises(ValueError, match="positive"):
        scale_method_lr(optax.sgd(0.1), {"means": -1.0})
