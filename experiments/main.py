r"""The one entry point.

  python -m experiments.main                                   # the embedded default demo
  python -m experiments.main --config=experiments/configs/NAME.py --workdir=DIR [--config.x.y=v]

With a config it trains, writing DIR/config.json, DIR/metrics.jsonl, TensorBoard events
in DIR/tb and orbax checkpoints in DIR/checkpoints; rerunning the same command resumes
from the latest checkpoint. Ctrl-C / SIGTERM save at the next step and exit cleanly.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if _CONFIG.value is None:
        from experiments import demo_two_branch

        demo_two_branch.run(workdir=_WORKDIR.value or "runs/demo")
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required with --config.")
    from gje_jax.train import loop

    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
    """Console-script entry point (`gje-train`)."""
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    run()
