"""A run that goes wrong loses nothing: divergence, a second writer, resume records, and
workdir / checkpoint faults, each with one clear error (fault injection where needed)."""

import errno
import glob
import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from gje_jax.train import checkpoint, loop, workdir
from tests.helpers import train_config, xla_flags

_config = train_config


def _diverging():
    # The reported reproducer: plain SGD at a rate GNG's loss cannot take, checkpoints
    # every 7 steps and logs every 50, so the NaN appears between two log steps.
    return _config(
        "gmje_gng",
        num_steps=400,
        log_every=50,
        checkpoint_every=7,
        **{"optim.name": "sgd", "optim.lr": 0.05, "optim.schedule": "constant", "optim.grad_clip": 0.0},
    )


def _restore(config, path, step):
    state, *_ = loop.setup(config)
    mngr = checkpoint.make_manager(path)
    try:
        return checkpoint.restore_or_keep(mngr, state, step=step), mngr.all_steps()
    finally:
        mngr.close()


def test_divergence_saves_the_last_finite_state_and_keeps_every_finite_checkpoint(tmp_path, one_device):
    config = _diverging()
    with pytest.raises(FloatingPointError, match=r"The update at step (\d+) gave NaN/Inf, first in \[") as e:
        loop.train(config, str(tmp_path / "run"), progress=False)
    bad_step = int(e.value.args[0].split("step ")[1].split(" ")[0])
    assert f"step {bad_step - 1}, is saved" in str(e.value) and "--config.debug=True" in str(e.value)
    _, steps = _restore(config, str(tmp_path / "run"), None)
    # The rotation keeps the newest keep_checkpoints; the newest is the last finite state.
    assert max(steps) == bad_step - 1 and len(steps) == min(config.keep_checkpoints, bad_step // 7 + 1)
    for step in steps:  # every checkpoint kept is finite
        state, _ = _restore(config, str(tmp_path / "run"), step)
        assert checkpoint.first_nonfinite(state) is None
    # ... and equal, bitwise, to a run of the same config stopped just before the bad update.
    reference, _ = loop.train(config, str(tmp_path / "ref"), progress=False, stop_after=bad_step - 1)
    saved, _ = _restore(config, str(tmp_path / "run"), bad_step - 1)
    for a, b in zip(jax.tree.leaves(reference.params), jax.tree.leaves(saved.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(saved.diverged_at) == -1  # saved as a state that trains on when resumed
    # A rerun resumes from the last finite step and stops at the same update, saving nothing new.
    with pytest.raises(FloatingPointError, match=f"The update at step {bad_step} "):
        loop.train(config, str(tmp_path / "run"), progress=False)
    assert _restore(config, str(tmp_path / "run"), None)[1] == steps
    assert not os.path.exists(tmp_path / "run" / workdir.LOCK_NAME)


def test_the_step_guard_keeps_the_old_state_from_the_first_bad_update_on():
    from gje_jax.train.step import guarded_paths, keep_if_finite

    old, *_ = loop.setup(_config("gmje_smc"))
    assert checkpoint.first_nonfinite(old) is None  # an empty bank's -inf log-weights are allowed
    good = old.replace(step=old.step + 1, params=jax.tree.map(lambda x: x + 1, old.params))
    leaf = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(old.params)[0][1][0])
    nan_params = jax.tree.map(lambda x: x, old.params)
    flat, tree = jax.tree.flatten(nan_params)
    flat[1] = flat[1].at[0].set(np.nan)
    bad = old.replace(step=old.step + 1, params=jax.tree.unflatten(tree, flat))
    one = jax.numpy.float32(1.0)
    assert int(keep_if_finite(old, good, one).step) == 1  # a finite update is taken
    kept = keep_if_finite(old, bad, one)
    assert int(kept.step) == 0 and int(kept.diverged_at) == 1
    assert guarded_paths(old)[int(kept.diverged_tensor)] == "['params']" + leaf
    # Once diverged, even a finite update is refused: the state stays the last finite one.
    after = keep_if_finite(kept, good.replace(diverged_at=kept.diverged_at), one)
    assert int(after.step) == 0 and int(after.diverged_at) == 1
    nan_loss = keep_if_finite(old, good, jax.numpy.float32(np.nan))
    assert int(nan_loss.step) == 0 and guarded_paths(old)[int(nan_loss.diverged_tensor)] == "['loss']"


def test_first_nonfinite_names_the_leaf():
    state = {"a": np.ones(3, np.float32), "b": {"c": np.array([1.0, np.inf], np.float32)}, "n": np.int32(1)}
    assert checkpoint.first_nonfinite(jax.tree.map(jax.numpy.asarray, state)) == "['b']['c']"


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    config = _config("gje", num_steps=4, log_every=2, checkpoint_every=2)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(tmp_path / workdir.LOCK_NAME, "w") as f:
            json.dump({"pid": live.pid, "host": os.uname().nodename}, f)
        with pytest.raises(workdir.WorkdirError, match=f"held by pid {live.pid}"):
            loop.train(config, str(tmp_path), progress=False)
        assert not os.path.exists(tmp_path / "checkpoints")  # refused before writing anything
    finally:
        live.kill()
        live.wait()
    # The owner is gone (as after kill -9): the lock is stale and the run proceeds.
    state, _ = loop.train(config, str(tmp_path), progress=False)
    assert int(state.step) == 4 and not os.path.exists(tmp_path / workdir.LOCK_NAME)


def test_two_processes_on_one_workdir_one_is_refused(tmp_path):
    """Two real processes started together: exactly one trains, the other is refused."""
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})\n"
        "from gje_jax.train.configs import smoke_config\n"
        "from gje_jax.train import loop, workdir\n"
        "c = smoke_config(); c.num_steps = 30\n"
        "try:\n"
        f"    loop.train(c, {str(tmp_path)!r}, progress=False); print('TRAINED')\n"
        "except workdir.WorkdirError as e:\n"
        "    print('REFUSED', e)\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags()}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["REFUSED", "TRAINED"], outs
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in lines] == sorted({r["step"] for r in lines})


def _scalar_events(logdir):
    """(tag, step) of every scalar a TensorBoard reader shows: records after a purge marker
    (SessionLog START at step s) hide earlier-written ones with step >= s, as TensorBoard's
    loader does."""
    from tensorboardX.proto import event_pb2

    seen = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.*")), key=os.path.getmtime):
        data = open(path, "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            ev = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
                seen = [(t, s) for t, s in seen if s < ev.step]
            for v in ev.summary.value:
                seen.append((v.tag, ev.step))
    return seen


def test_resume_after_a_kill_records_each_step_once(tmp_path):
    config = _config("gje", num_steps=20, log_every=1, checkpoint_every=5)
    loop.train(config, str(tmp_path), progress=False, stop_after=13)
    # As after kill -9 at step 13: the steps after the last checkpoint (10) were logged.
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "13")
    first_config = (tmp_path / "config.json").read_text()
    loop.train(config, str(tmp_path), progress=False)
    steps = [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl")]
    assert steps == list(range(1, 21))
    events = _scalar_events(str(tmp_path / "tb"))
    loss_steps = sorted(s for t, s in events if t == "train/loss")
    assert loss_steps == list(range(1, 21))
    assert (tmp_path / "config.json").read_text() == first_config


def test_metrics_are_strict_json():
    line = workdir.metrics_line(7, {"loss": float("nan"), "x": float("inf"), "y": 1.5})

    def refuse(name):
        raise ValueError(name)

    assert json.loads(line, parse_constant=refuse) == {"step": 7, "loss": None, "x": None, "y": 1.5}


def test_a_resume_with_other_settings_is_recorded_as_a_segment(tmp_path, one_device):
    loop.train(_config("gje", num_steps=4, log_every=2), str(tmp_path), progress=False)
    first = (tmp_path / "config.json").read_text()
    loop.train(_config("gje", num_steps=6, log_every=2), str(tmp_path), progress=False)
    assert (tmp_path / "config.json").read_text() == first
    assert json.loads((tmp_path / "config.step4.json").read_text())["num_steps"] == 6


def test_checkpoints_without_config_json_are_refused(tmp_path):
    loop.train(_config("gje", num_steps=2, log_every=1), str(tmp_path), progress=False)
    os.remove(tmp_path / "config.json")
    with pytest.raises(workdir.WorkdirError, match="no config.json"):
        loop.train(_config("simclr", num_steps=4, log_every=1), str(tmp_path), progress=False)


@pytest.mark.parametrize("garbage", ["{not json", "[1, 2]", ""])
def test_garbage_config_json_is_one_clear_error(tmp_path, garbage):
    (tmp_path / "config.json").write_text(garbage)
    with pytest.raises(workdir.WorkdirError, match="config.json"):
        loop.train(_config("gje", num_steps=2), str(tmp_path), progress=False)


def test_workdir_that_is_a_file_or_not_writable(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(workdir.WorkdirError, match="is a file"):
        loop.train(_config("gje", num_steps=2), str(f), progress=False)

    def read_only(*a, **k):  # root ignores permission bits: inject the error instead
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(workdir.tempfile, "TemporaryFile", read_only)
    with pytest.raises(workdir.WorkdirError, match="not writable .read-only file system"):
        loop.train(_config("gje", num_steps=2), str(tmp_path / "ro"), progress=False)


def test_disk_full_during_a_save_is_one_clear_error(tmp_path, monkeypatch, one_device):
    config = _config("gje", num_steps=8, log_every=2, checkpoint_every=2)
    real_save = checkpoint.save

    def save(mngr, step, state):
        if step >= 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(mngr, step, state)

    monkeypatch.setattr(checkpoint, "save", save)
    with pytest.raises(workdir.WorkdirError, match="no space left on the device") as e:
        loop.train(config, str(tmp_path), progress=False)
    assert "intact" in str(e.value) and not os.path.exists(tmp_path / workdir.LOCK_NAME)
    monkeypatch.setattr(checkpoint, "save", real_save)
    state, _ = loop.train(config, str(tmp_path), progress=False)  # space freed: resumes
    assert int(state.step) == 8


def test_corrupt_latest_checkpoint_offers_the_earlier_ones(tmp_path, one_device):
    config = _config("gje", num_steps=10, log_every=5, checkpoint_every=5)
    loop.train(config, str(tmp_path), progress=False)
    for p in (tmp_path / "checkpoints" / "10").rglob("*"):
        if p.is_file() and p.stat().st_size > 0 and "metadata" not in p.name:
            p.write_bytes(bytes(b ^ 0xFF for b in p.read_bytes()))
    longer = _config("gje", num_steps=15, log_every=5, checkpoint_every=5)
    with pytest.raises(checkpoint.CheckpointError, match=r"step 10 .*Earlier checkpoints: steps \[5\]"):
        loop.train(longer, str(tmp_path), progress=False)
    longer.resume_from_step = 5
    state, _ = loop.train(longer, str(tmp_path), progress=False)
    assert int(state.step) == 15
    assert os.path.isdir(tmp_path / "checkpoints_discarded" / "10")  # moved aside, not deleted
    steps = [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl")]
    assert steps == [5, 10, 15]


def test_resume_from_a_step_that_is_not_there(tmp_path):
    loop.train(_config("gje", num_steps=2, log_every=1), str(tmp_path), progress=False)
    with pytest.raises(checkpoint.CheckpointError, match=r"resume_from_step=7 .*\[2\]"):
        loop.train(_config("gje", num_steps=4, resume_from_step=7), str(tmp_path), progress=False)


def test_entry_point_prints_one_clear_error(tmp_path):
    (tmp_path / "w").write_text("x")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.main",
            "--config=experiments/configs/synthetic_views.py:runlocal",
            f"--workdir={tmp_path / 'w'}",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[0].startswith("error: --workdir=")
    assert "Traceback" not in out.stderr


def test_a_real_full_disk_ends_in_one_error_line_and_resumes_once_freed(tmp_path):
    """A 300 KiB tmpfs fills during the third save. Needs mount (root); skipped elsewhere."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=experiments/configs/synthetic_views.py:runlocal",
        "--config.num_steps=120",
        "--config.checkpoint_every=20",
    ]
    try:
        out = subprocess.run(cmd + [f"--workdir={mnt / 'w'}"], cwd=root, capture_output=True, text=True, timeout=240)
        import shutil

        shutil.copytree(mnt / "w", tmp_path / "freed")
    finally:
        subprocess.run(["umount", str(mnt)])
    # The error is the first thing after the progress bar: the tracebacks tensorstore's and
    # orbax's threads print wait behind it, summarised in one note.
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    first = next(i for i, line in enumerate(lines) if "it/s" not in line and "s/it" not in line)
    assert lines[first].startswith("error:") and "no space left on the device" in lines[first], out.stderr
    assert len([line for line in lines if line.startswith("error:")]) == 1
    assert all(line.startswith("(") for line in lines[first + 1 :]), out.stderr
    again = subprocess.run(
        cmd + [f"--workdir={tmp_path / 'freed'}"], cwd=root, capture_output=True, text=True, timeout=240
    )
    assert again.returncode == 0 and "Resumed from step" in again.stdout
    steps = [json.loads(x)["step"] for x in open(tmp_path / "freed" / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 120


def test_background_threads_stderr_waits_behind_the_error(monkeypatch, capsys):
    """What orbax's and tensorstore's threads print while a save fails comes after the one
    error line (summarised); on success it is all printed after the run."""
    import threading

    from experiments import main as entry

    def fails(argv):
        t = threading.Thread(target=lambda: sys.stderr.write("Traceback (most recent call last):\n  noise\n"))
        t.start()
        t.join()
        sys.stderr.write("main thread progress\n")
        raise workdir.WorkdirError("the disk is full")

    monkeypatch.setattr(entry, "main", fails)
    with pytest.raises(SystemExit):
        entry._main_with_clear_errors(["x"])
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "main thread progress" and err[1] == "error: the disk is full"
    assert err[2].startswith("(0 error report(s) and 2 stderr line(s)") and "Traceback" in err[2]
    assert len(err) == 3

    def succeeds(argv):
        t = threading.Thread(target=lambda: sys.stderr.write("a warning from a thread\n"))
        t.start()
        t.join()
        sys.stderr.write("done\n")

    monkeypatch.setattr(entry, "main", succeeds)
    entry._main_with_clear_errors(["x"])
    assert capsys.readouterr().err.splitlines() == ["done", "a warning from a thread"]


def test_checkpoints_without_the_divergence_record_still_restore(tmp_path):
    """The record is never saved, so a checkpoint written before it existed (the five
    TrainState fields, written here by orbax directly) restores into today's TrainState."""
    import orbax.checkpoint as ocp

    state, *_ = loop.setup(_config("gje"))
    fields = ("step", "params", "opt_state", "batch_stats", "method_state")
    old = {k: getattr(state, k) for k in fields}
    old["params"] = jax.tree.map(lambda x: x + 1, old["params"])
    with ocp.CheckpointManager(str(tmp_path / "checkpoints")) as mngr:
        mngr.save(4, args=ocp.args.StandardSave(old))
        mngr.wait_until_finished()
    restored, steps = _restore(_config("gje"), str(tmp_path), None)
    assert steps == [4] and int(restored.diverged_at) == -1 and int(restored.diverged_tensor) == -1
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(old["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_run_records_learning_rate_and_load_run(tmp_path, one_device):
    """Each segment appends its record (versions, commit, devices, command); the logged
    learning rate is the warm-up's closed form; load_run returns the trained state."""
    from gje_jax.train import load_run

    config = _config(
        "gmje", num_steps=8, log_every=1, checkpoint_every=4, **{"optim.warmup_steps": 4, "optim.schedule": "constant"}
    )
    loop.train(config, str(tmp_path), progress=False, stop_after=4)
    trained, _ = loop.train(config, str(tmp_path), progress=False)
    recs = [json.loads(x) for x in open(tmp_path / "runs.jsonl")]
    assert [r["start_step"] for r in recs] == [0, 4]
    assert recs[0]["packages"]["jax"] == jax.__version__ and recs[0]["packages"]["flax"]
    assert recs[0]["devices"] == [
        {"platform": "cpu", "kind": jax.devices()[0].device_kind, "count": jax.device_count()}
    ]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=os.path.dirname(__file__))
    if head.returncode == 0:
        assert recs[0]["git"]["commit"] == head.stdout.strip()
    # Step s's update used lr * n / warmup with n = s - 1 updates before it (then lr).
    lrs = {r["step"]: r["lr"] for r in map(json.loads, open(tmp_path / "metrics.jsonl"))}
    want = {s: config.optim.lr * min((s - 1) / 4, 1.0) for s in range(1, 9)}
    assert lrs.keys() == want.keys()
    np.testing.assert_allclose([lrs[s] for s in want], list(want.values()), rtol=1e-6)
    run = load_run(str(tmp_path))
    assert int(run.state.step) == 8 and run.config.method.name == "gmje" and len(run.records) == 2
    for a, b in zip(jax.tree.leaves(run.state.params), jax.tree.leaves(trained.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(run.density.means, trained.params["method"]["means"])
    assert int(load_run(str(tmp_path), step=4).state.step) == 4
    with pytest.raises(workdir.WorkdirError, match="no config.json"):
        load_run(str(tmp_path / "nothing"))


def test_a_checkpoint_holding_nan_is_refused_at_start_up(tmp_path, one_device):
    """A NaN checkpoint (as versions without the step's guard wrote) is refused naming the
    tensor and the earlier steps, instead of a resume whose every update diverges."""
    config = _config("gje", num_steps=8, log_every=2, checkpoint_every=2)
    state, _ = loop.train(config, str(tmp_path), progress=False, stop_after=4)
    flat, tree = jax.tree.flatten(state.params)
    flat[0] = flat[0] * np.nan
    mngr = checkpoint.make_manager(str(tmp_path))
    checkpoint.save(mngr, 6, state.replace(step=state.step + 2, params=jax.tree.unflatten(tree, flat)))
    mngr.wait_until_finished()
    mngr.close()
    with pytest.raises(checkpoint.CheckpointError, match=r"step 6 .* holds NaN/Inf, first in \['params'\].*\[2, 4\]"):
        loop.train(config, str(tmp_path), progress=False)
    with config.unlocked():
        config.resume_from_step = 4
    state, _ = loop.train(config, str(tmp_path), progress=False)
    assert int(state.step) == 8 and checkpoint.first_nonfinite(state) is None
