"""Training one run of an experiment's table through gje_jax.train.loop, timed."""

from __future__ import annotations

import json
import os
import time

from gje_jax.train import loop


def train_timed(config, workdir: str, *, progress: bool = True):
    """Trains (or resumes) `config` in `workdir` -> (state or None, seconds, error message,
    the step of a non-finite update or None).

    A non-finite update is reported (its message's first sentence), not raised, so one
    failing method does not stop a table. seconds is the time of the invocation that did
    the training: a rerun that finds the run finished keeps the first one's
    (workdir/timing.json) instead of reporting a few seconds of restoring.
    """
    start = time.perf_counter()
    state, error, diverged_at = None, "", None
    try:
        state, _ = loop.train(config, workdir, progress=progress)
    except FloatingPointError as e:
        error, diverged_at = str(e).split(". ")[0], getattr(e, "step", None)
    seconds = time.perf_counter() - start
    timing = os.path.join(workdir, "timing.json")
    if seconds > 5 or not os.path.exists(timing):
        with open(timing, "w") as f:
            json.dump({"seconds": seconds}, f)
    with open(timing) as f:
        return state, json.load(f)["seconds"], error, diverged_at
