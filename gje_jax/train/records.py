"""What a run leaves behind to be understood and reused: a record of each segment (package
versions, git commit, devices, command line) and `load_run`, one call from a workdir to its
config, trained TrainState and the method's density."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from typing import Any, NamedTuple

import jax
import ml_collections

from gje_jax import methods

RECORDS_NAME = "runs.jsonl"

# The distributions whose versions can change a result (others are recorded if installed).
_PACKAGES = (
    "gje_jax",
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "libtpu",
    "flax",
    "optax",
    "orbax-checkpoint",
    "chex",
    "numpy",
    "ml-collections",
    "tensorflow-datasets",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a run's numbers, plus Python's.

    Example:
      >>> from gje_jax.train import records
      >>> v = records.package_versions()
      >>> v["jax"] == jax.__version__, "python" in v
      (True, True)
    """
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_commit(path: str | None = None) -> dict[str, Any] | None:
    """{'commit': sha, 'dirty': bool} of the git checkout holding `path` (default: this
    package's source), or None when it is not in one (a wheel install) or git is missing.

    Example:
      >>> from gje_jax.train import records
      >>> g = records.git_commit("/")                          # not a checkout: None
      >>> g is None or set(g) == {"commit", "dirty"}
      True
    """
    path = path or os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        return subprocess.run(["git", "-C", path, *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return None
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def provenance() -> str:
    """One line for a results table: the versions that shape its numbers and the commit.

    Example:
      >>> from gje_jax.train import records
      >>> records.provenance().startswith("Made with jax ")
      True
    """
    v = package_versions()
    names = ("jax", "jaxlib", "flax", "optax", "numpy")
    parts = [f"{n} {v[n]}" for n in names if n in v] + [f"Python {v['python']}", f"backend {jax.default_backend()}"]
    g = git_commit()
    where = f", commit {g['commit'][:7]}{' (uncommitted changes)' if g['dirty'] else ''}" if g else ""
    return "Made with " + ", ".join(parts) + where + "."


def run_record(start_step: int, argv: list[str] | None = None) -> dict[str, Any]:
    """The record of one segment of a run (a fresh start or a resume at start_step).

    Example:
      >>> from gje_jax.train import records
      >>> r = records.run_record(0, ["python", "-m", "experiments.main"])
      >>> r["start_step"], r["devices"][0]["platform"], r["command"]
      (0, 'cpu', 'python -m experiments.main')
    """
    kinds: dict[tuple[str, str], int] = {}
    for d in jax.devices():
        key = (d.platform, d.device_kind)
        kinds[key] = kinds.get(key, 0) + 1
    return {
        "start_step": int(start_step),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv if argv is None else argv),
        "git": git_commit(),
        "packages": package_versions(),
        "devices": [{"platform": p, "kind": k, "count": n} for (p, k), n in sorted(kinds.items())],
        "process_count": jax.process_count(),
        "host": platform.node(),
    }


def append_run_record(workdir: str, start_step: int, argv: list[str] | None = None) -> dict[str, Any]:
    """Appends this segment's record to WORKDIR/runs.jsonl (one line per segment: earlier
    segments' records are never rewritten) and returns it.

    Example:
      >>> import tempfile
      >>> from gje_jax.train import records
      >>> w = tempfile.mkdtemp()
      >>> records.append_run_record(w, 0, ["train"])["command"], sorted(__import__("os").listdir(w))
      ('train', ['runs.jsonl'])
    """
    record = run_record(start_step, argv)
    with open(os.path.join(workdir, RECORDS_NAME), "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def read_run_records(workdir: str) -> list[dict[str, Any]]:
    """Every segment's record of a workdir, oldest first ([] for a run from before records).

    Example:
      >>> import tempfile
      >>> from gje_jax.train import records
      >>> w = tempfile.mkdtemp()
      >>> _ = records.append_run_record(w, 0); _ = records.append_run_record(w, 10)
      >>> [r["start_step"] for r in records.read_run_records(w)]
      [0, 10]
    """
    path = os.path.join(workdir, RECORDS_NAME)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Run(NamedTuple):
    """A trained run: its config (the first segment's, from config.json), the restored
    TrainState, its Method, the density it holds (None for methods without one) and every
    segment's record (runs.jsonl).

    Example:
      >>> from gje_jax.train.records import Run
      >>> Run._fields
      ('config', 'state', 'method', 'density', 'records')
    """

    config: ml_collections.ConfigDict
    state: Any
    method: Any
    density: Any
    records: list


def _tuples(x):
    # JSON has no tuples; the configs' sequences (hidden widths, image shapes) are tuples.
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def load_run(workdir: str, step: int | None = None, *, data=None) -> Run:
    """Loads a workdir written by the train loop: config.json, the checkpoint of `step`
    (default: the latest) and the method's density, for evaluation.

    data: `loop.load_data(config)`'s result when the caller has it (it is read otherwise:
      the state's shapes come from the data's example views).

    Example:
      >>> import tempfile
      >>> from gje_jax.train.configs import smoke_config
      >>> from gje_jax.train import loop, records
      >>> config = smoke_config("gmje")
      >>> workdir = tempfile.mkdtemp()
      >>> _ = loop.train(config, workdir, progress=False, stop_after=4)
      >>> run = records.load_run(workdir)
      >>> int(run.state.step), run.config.method.name, run.density.num_components
      (4, 'gmje', 3)
    """
    from gje_jax.train import checkpoint, loop
    from gje_jax.train import workdir as workdir_lib

    raw = workdir_lib.read_config(workdir)
    if raw is None:
        raise workdir_lib.WorkdirError(f"{workdir} holds no config.json: it is not a run's workdir.")
    config = ml_collections.ConfigDict(_tuples(raw))
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):  # make_manager would create it
        raise checkpoint.CheckpointError(f"{workdir} holds no checkpoint yet.")
    state, *_ = loop.setup(config, data=data)
    mngr = checkpoint.make_manager(workdir)
    try:
        if mngr.latest_step() is None:
            raise checkpoint.CheckpointError(f"{workdir} holds no checkpoint yet.")
        state = checkpoint.restore_or_keep(mngr, state, step=step)
    finally:
        mngr.close()
    method = methods.build(config.method, config)
    density = method.density(state.params["method"], state.method_state) if method.density else None
    return Run(config, state, method, density, read_run_records(workdir))
