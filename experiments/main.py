r"""The one entry point.

  python -m experiments.main                                   # the default job (below)
  python -m experiments.main --config=experiments/configs/NAME.py --workdir=DIR [--config.x.y=v]

With no flags it runs the synthetic multi-modal alignment comparison on `two_branch`
(every method, ~2 minutes on 2 CPU cores) into runs/alignment. A config whose
`experiment` field is 'alignment', 'trap', 'sampling' or 'stability' runs that experiment; any other config
trains one method: writing DIR/config.json, DIR/metrics.jsonl, TensorBoard events
in DIR/tb and orbax checkpoints in DIR/checkpoints; rerunning the same command resumes
from the latest checkpoint. Ctrl-C / SIGTERM save at the next step and exit cleanly.
"""

from __future__ import annotations

from experiments import threads

threads.default_openblas_threads()  # before numpy, scipy and jax load

import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    command = " ".join(["python -m experiments.main"] + sys.argv[1:])
    if config is None:
        from experiments import alignment
        from experiments.configs import alignment as alignment_config

        alignment.run(alignment_config.get_config(), _WORKDIR.value or "runs/alignment", command=command)
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required with --config.")
    kind = config.get("experiment", "train")
    if kind == "alignment":
        from experiments import alignment

        alignment.run(config, _WORKDIR.value, command=command)
    elif kind == "trap":
        from experiments import trap

        trap.run(config, _WORKDIR.value, command=command)
    elif kind == "sampling":
        from experiments import sampling

        sampling.run(config, _WORKDIR.value, command=command)
    elif kind == "stability":
        from experiments import stability

        stability.run(config, _WORKDIR.value, command=command)
    else:
        from gje_jax.train import loop

        loop.train_and_evaluate(config, _WORKDIR.value)


def _main_with_clear_errors(argv):
    # A run that cannot go on for a reason the user can act on (workdir, checkpoint, NaN)
    # ends in its one-paragraph message, not a traceback: nothing else needs reading.
    from gje_jax.train.checkpoint import CheckpointError
    from gje_jax.train.workdir import WorkdirError

    try:
        main(argv)
    except (WorkdirError, CheckpointError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def run():
    """Console-script entry point (`gje-train`)."""
    app.run(_main_with_clear_errors, argv=sys.argv)


if __name__ == "__main__":
    run()
