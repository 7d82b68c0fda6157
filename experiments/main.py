r"""The one entry point.

  python -m experiments.main                                   # the default job (below)
  python -m experiments.main --config=experiments/configs/NAME.py --workdir=DIR [--config.x.y=v]
  gje-train --config=NAME[:ARG] --workdir=DIR                  # installed: a config by name

`--config=NAME` (no '/', no '.py') names a config of this package's configs/ folder, so an
installed package (importable as `gje_experiments`; `experiments` in a source checkout)
runs from any directory.

With no flags it runs the synthetic multi-modal alignment comparison on `two_branch`
(every method, ~2 minutes on 2 CPU cores) into runs/alignment. A config whose
`experiment` field is 'alignment', 'trap', 'sampling' or 'stability' runs that experiment; any other config
trains one method: writing DIR/config.json, DIR/metrics.jsonl, TensorBoard events
in DIR/tb and orbax checkpoints in DIR/checkpoints; rerunning the same command resumes
from the latest checkpoint. Ctrl-C / SIGTERM save at the next step and exit cleanly.
"""

from __future__ import annotations

from . import threads

threads.default_openblas_threads()  # before numpy, scipy and jax load

import logging as logging_std  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    command = " ".join([f"python -m {__package__ or 'experiments'}.main"] + (_AS_TYPED or sys.argv)[1:])
    if config is None:
        from . import alignment
        from .configs import alignment as alignment_config

        alignment.run(alignment_config.get_config(), _WORKDIR.value or "runs/alignment", command=command)
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required with --config.")
    kind = config.get("experiment", "train")
    if kind == "alignment":
        from . import alignment

        alignment.run(config, _WORKDIR.value, command=command)
    elif kind == "trap":
        from . import trap

        trap.run(config, _WORKDIR.value, command=command)
    elif kind == "sampling":
        from . import sampling

        sampling.run(config, _WORKDIR.value, command=command)
    elif kind == "stability":
        from . import stability

        stability.run(config, _WORKDIR.value, command=command)
    else:
        from gje_jax.train import loop

        loop.train(config, _WORKDIR.value)


def _main_with_clear_errors(argv):
    # A run that cannot go on for a reason the user can act on (workdir, checkpoint, NaN)
    # ends in its one-paragraph message, not a traceback: nothing else needs reading.
    from gje_jax.train.checkpoint import CheckpointError
    from gje_jax.train.workdir import WorkdirError

    held = _HoldBackgroundErrors()
    for handler in logging_std.getLogger().handlers:
        handler.addFilter(held)
    # tensorstore's writer threads report a callback that failed after orbax closed its event
    # loop through sys.excepthook (a bare traceback, "Event loop is closed"); hold those too.
    default_hook, sys.excepthook = sys.excepthook, held.excepthook
    default_thread_hook, threading.excepthook = threading.excepthook, held.thread_excepthook
    # ... and tensorstore also prints tracebacks of such callbacks straight to sys.stderr from
    # its threads: writes to stderr from any thread but the main one wait behind the error.
    default_stderr, sys.stderr = sys.stderr, _MainThreadStderr(sys.stderr, held)
    failed = False
    try:
        main(argv)
    except (WorkdirError, CheckpointError, FloatingPointError) as e:
        failed = True
        print(f"error: {e}", file=default_stderr)
        if held.records or held.writes:
            first = (held.records[0].getMessage() if held.records else "".join(held.writes).strip()).splitlines()
            n_lines = "".join(held.writes).count("\n")
            print(
                f"({len(held.records)} error report(s) and {n_lines} stderr line(s) of "
                f"background threads held back; the first: {first[0][:300] if first else ''})",
                file=default_stderr,
            )
        sys.exit(1)
    finally:
        if not failed:
            held.active = False
            sys.excepthook, threading.excepthook = default_hook, default_thread_hook
            sys.stderr = default_stderr
        # else: the process is exiting on its error line. Threads still winding down (a
        # tensorboardX writer whose queue closed under it) stay held back: nothing after it.
    held.replay()


class _HoldBackgroundErrors(logging_std.Filter):
    """Holds back the error logs of orbax's and asyncio's background threads while a run is
    going: when a save fails (a full disk) they come as dozens of tracebacks before the one
    error that says what happened. On a clean exit they are printed after all."""

    def __init__(self):
        super().__init__()
        self.records, self.writes, self.active = [], [], True

    def filter(self, record):
        if (
            self.active
            and record.levelno >= logging_std.ERROR
            and ("orbax" in record.pathname or record.name.startswith(("orbax", "asyncio")))
        ):
            self.records.append(record)
            return False
        return True

    def excepthook(self, *exc_info):
        record = logging_std.LogRecord("excepthook", logging_std.ERROR, "", 0, str(exc_info[1]), None, exc_info)
        self.records.append(record)

    def thread_excepthook(self, args):
        self.excepthook(args.exc_type, args.exc_value, args.exc_traceback)

    def replay(self):
        for r in self.records:
            logging_std.getLogger(r.name).handle(r)
        sys.stderr.write("".join(self.writes))


class _MainThreadStderr:
    """sys.stderr for the run: the main thread's writes (progress bars, warnings, the error)
    pass at once; other threads' writes are held in `held.writes` while `held.active`."""

    def __init__(self, stream, held: _HoldBackgroundErrors):
        self._stream, self._held = stream, held

    def write(self, text):
        if self._held.active and threading.current_thread() is not threading.main_thread():
            self._held.writes.append(text)
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):  # flush, fileno, isatty, encoding, ...: the real stream's
        return getattr(self._stream, name)


_AS_TYPED: list[str] = []  # the command line before config names were resolved (for records)
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def config_path(value: str) -> str:
    """--config's value with a bare NAME[:ARG] resolved to this package's configs/NAME.py."""
    name, sep, arg = value.partition(":")
    if "/" in name or os.sep in name or name.endswith(".py") or not name:
        return value
    path = os.path.join(CONFIG_DIR, f"{name}.py")
    if not os.path.exists(path):
        known = sorted(
            f[:-3]
            for f in os.listdir(CONFIG_DIR)
            if f.endswith(".py") and "def get_config" in open(os.path.join(CONFIG_DIR, f)).read()
        )
        sys.exit(f"error: --config={value}: no config named {name!r}; known: {known} (or pass a file path).")
    return path + sep + arg


def _resolve_config_names(argv: list[str]) -> list[str]:
    out = []
    for a in argv:
        if a.startswith("--config="):
            a = "--config=" + config_path(a[len("--config=") :])
        out.append(a)
    return out


def run():
    """Console-script entry point (`gje-train`)."""
    _AS_TYPED[:] = sys.argv
    sys.argv[:] = _resolve_config_names(sys.argv)
    app.run(_main_with_clear_errors, argv=sys.argv)


if __name__ == "__main__":
    run()
