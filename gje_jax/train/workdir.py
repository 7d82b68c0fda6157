"""What a run owns in its workdir: the lock, config.json and metrics.jsonl.

Every failure here is a WorkdirError with one sentence saying what is wrong and what to
do, raised before anything is written (so nothing of an earlier run is lost).
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import tempfile
import time

from gje_jax.train.checkpoint import CheckpointError


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked (not a directory, not writable, locked by a
    running process, or holding an unreadable config.json). Nothing was changed.

    Example:
      >>> from gje_jax.train import workdir
      >>> issubclass(workdir.WorkdirError, RuntimeError)
      True
    """


LOCK_NAME = ".lock"


def prepare(path: str) -> str:
    """Creates `path` if needed and checks it is a writable directory -> its absolute path.

    Example:
      >>> import tempfile, os
      >>> from gje_jax.train import workdir
      >>> d = workdir.prepare(os.path.join(tempfile.mkdtemp(), "run"))
      >>> os.path.isdir(d)
      True
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"--workdir={path} is a file, not a directory; pass a directory (new or a run's).")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise WorkdirError(f"--workdir={path} is not writable ({describe_os_error(e)}).") from None
    return path


def describe_os_error(e: OSError) -> str:
    """A short reason for an OSError, with the common cases named plainly."""
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EROFS:
        return "read-only file system"
    return f"{type(e).__name__}: {e}"


def write_failure(e: BaseException) -> str | None:
    """Why a write failed, if `e` (or what caused it) is a failed write; else None.

    Orbax's writers (tensorstore) report a full disk as a ValueError carrying the OS message,
    not as an OSError, so the chain's messages are read too.

    Example:
      >>> import errno
      >>> from gje_jax.train import workdir
      >>> workdir.write_failure(OSError(errno.ENOSPC, "No space left on device"))
      'no space left on the device'
      >>> workdir.write_failure(ValueError("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']"))
      'no space left on the device'
      >>> workdir.write_failure(ValueError("something else")) is None
      True
    """
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return describe_os_error(e)
        text = str(e)
        if "No space left on device" in text or "os_error_code='28'" in text:
            return "no space left on the device"
        if "Read-only file system" in text:
            return "read-only file system"
        e = e.__cause__ or e.__context__
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Lock:
    """One writer per workdir: WORKDIR/.lock holds the owner's pid and host.

    Taking it is atomic (a hard link of a complete file: it fails if the lock exists). A
    lock left by a killed process on this host (its pid no longer runs) is stale and is
    taken over; a live owner, or one on another host, makes `acquire` raise WorkdirError
    naming it. Released on exit of the `with` block, whatever the exit.

    Example:
      >>> import tempfile
      >>> from gje_jax.train import workdir
      >>> d = tempfile.mkdtemp()
      >>> with workdir.Lock(d):
      ...     try:
      ...         workdir.Lock(d).acquire()
      ...     except workdir.WorkdirError as e:
      ...         print(str(e).split(":")[0])
      Another process is writing to this workdir
    """

    def __init__(self, path: str):
        self.path = os.path.join(path, LOCK_NAME)
        self.held = False

    def _owner(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def acquire(self) -> Lock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        tmp = f"{self.path}.{me['pid']}.tmp"
        with open(tmp, "w") as f:
            json.dump(me, f)
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return self
                except FileExistsError:
                    owner = self._owner()
                    if owner is None:  # released meanwhile
                        continue
                    pid, host = owner.get("pid"), owner.get("host")
                    if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                        os.unlink(self.path)  # stale: its owner was killed
                        continue
                    raise WorkdirError(
                        f"Another process is writing to this workdir: {self.path} is held by pid {pid} on host "
                        f"{host!r}. Wait for it, or use another --workdir; if that process is gone (another host "
                        f"cannot be checked from here), delete {self.path}."
                    ) from None
            raise WorkdirError(f"Could not take {self.path}: it keeps changing hands.")
        finally:
            os.unlink(tmp)

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner and owner.get("pid") == os.getpid():
                os.unlink(self.path)
            self.held = False

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_config(path: str) -> dict | None:
    """WORKDIR/config.json as a dict, None if absent; WorkdirError if unreadable."""
    file = os.path.join(path, "config.json")
    if not os.path.exists(file):
        return None
    try:
        with open(file) as f:
            out = json.load(f)
    except (OSError, ValueError) as e:
        raise WorkdirError(
            f"{file} cannot be read ({type(e).__name__}: {str(e)[:200]}); it records which method and model "
            "the checkpoints hold. Restore it from a backup, or use a new --workdir."
        ) from None
    if not isinstance(out, dict):
        raise WorkdirError(f"{file} does not hold a config (a JSON object); restore it or use a new --workdir.")
    return out


def strict_json_value(x):
    """A metric value for strict JSON: non-finite floats become null (json.loads gives None)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def metrics_line(step: int, metrics: dict) -> str:
    """One metrics.jsonl record: {"step": step, ...}, NaN/inf written as null.

    Example:
      >>> from gje_jax.train import workdir
      >>> workdir.metrics_line(3, {"loss": float("nan"), "lr": 0.1})
      '{"step": 3, "loss": null, "lr": 0.1}'
    """
    return json.dumps({"step": step, **{k: strict_json_value(v) for k, v in metrics.items()}}, allow_nan=False)


def truncate_metrics(file: str, step: int) -> int:
    """Keeps the records of metrics.jsonl up to `step` (the step a run resumes from):
    the steps after it will be run, and logged, again. Returns how many were dropped.

    Rewritten through a temporary file and a rename, so a kill leaves either file whole.
    """
    if not os.path.exists(file):
        return 0
    kept, dropped = [], 0
    with open(file) as f:
        for line in f:
            try:
                rec_step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                dropped += 1  # a torn last line from a kill
                continue
            if rec_step <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = file + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, file)
    return dropped


def _select(config, path):
    val = config
    for p in path.split("."):
        val = val[p]
    return val


def check_config(config, workdir: str, old: dict | None, identity_fields) -> None:
    """Refuses a config whose `identity_fields` (paths) differ from the run in `workdir`
    (its config.json `old`): its checkpoints could not be restored."""
    if old is None:
        if os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(os.path.join(workdir, "checkpoints")):
            raise WorkdirError(
                f"{workdir} holds checkpoints but no config.json, so which method and model they belong to is "
                "unknown. Restore config.json, or use a new --workdir. Nothing was changed."
            )
        return
    new = json.loads(config.to_json())
    for field in identity_fields:
        try:
            a, b = _select(old, field), _select(new, field)
        except (KeyError, TypeError):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            # A field added after the old run was written defaults to the old behaviour; one
            # the old (wider) section held and this one does not have had no effect there.
            a, b = {k: v for k, v in a.items() if k in b}, {k: v for k, v in b.items() if k in a}
        if a != b:
            raise CheckpointError(
                f"{workdir} holds a run with config.{field}={a!r}, this config has {b!r}. Its checkpoints cannot "
                f"be resumed by this config; use a new --workdir. Nothing was changed."
            )


def write_config(config, workdir: str, old: dict | None, start: int) -> None:
    """config.json is the first segment's config and is never rewritten; a resume with other
    (compatible) settings records them as config.step<N>.json, N the step it resumed from."""
    text = config.to_json(indent=2)
    if old is None:
        name = "config.json"
    elif old == json.loads(text):
        return
    else:
        name = f"config.step{start}.json"
        print(f"Settings differ from config.json; this segment's config is in {name}.")
    tmp = os.path.join(workdir, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(workdir, name))
