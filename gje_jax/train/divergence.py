"""What the loop does about a non-finite update: the train step's guard keeps the last finite
state; this saves exactly that state and stops naming the step and the tensor, and refuses a
checkpoint that already holds NaN/Inf at start-up."""

from __future__ import annotations

import jax

from gje_jax.train import checkpoint
from gje_jax.train.step import guarded_paths


class Diverged(FloatingPointError):
    """A non-finite update stopped the run; .step is its step, the state before it is saved.

    Example:
      >>> from gje_jax.train.divergence import Diverged
      >>> e = Diverged(18, "The update at step 18 gave NaN/Inf")
      >>> isinstance(e, FloatingPointError), e.step
      (True, 18)
    """

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


def save(mngr, step: int, state, config) -> None:
    """Saves `step`, unless an update diverged: then the state is the last finite one (the
    step's guard keeps it), saved by stop_if_diverged. A state starts finite (the start-up
    check), so every checkpoint is."""
    stop_if_diverged(mngr, state, config)
    checkpoint.save(mngr, step, state)


def check_restored(mngr, state, config) -> None:
    """A checkpoint holding NaN/Inf (written by a version without the guard) is refused at
    start-up: resuming from it would make every update non-finite."""
    step = mngr.latest_step()
    bad = None if step is None else checkpoint.first_nonfinite(state.checkpointed())  # named as the guard does
    if bad is not None:
        earlier = sorted(s for s in mngr.all_steps() if s < step)
        raise checkpoint.CheckpointError(
            f"The checkpoint of step {step} in {mngr.directory} holds NaN/Inf, first in {bad} (method "
            f"{config.method.name}). "
            + (
                f"Resume from an earlier one with --config.resume_from_step=N (N in {earlier}; later ones are "
                "moved to checkpoints_discarded/), or use a new --workdir."
                if earlier
                else "No earlier checkpoint is left; use a new --workdir."
            )
        )


def stop_if_diverged(mngr, state, config, at: int | None = None) -> None:
    """After a non-finite update the step's guard keeps the last finite state: save it (unless
    it is saved already) and stop, naming the step and the first non-finite tensor.
    at: state.diverged_at when the caller has fetched it already."""
    at = int(jax.device_get(state.diverged_at)) if at is None else int(at)
    if at < 0:
        return
    tensor = int(jax.device_get(state.diverged_tensor))
    good = at - 1
    if mngr.latest_step() != good:
        checkpoint.save(mngr, good, state)  # the record itself is never checkpointed
        mngr.wait_until_finished()
    raise Diverged(
        at,
        f"The update at step {at} gave NaN/Inf, first in {guarded_paths(state)[tensor]} (method "
        f"{config.method.name}). The last finite state, step {good}, is saved as the newest checkpoint and every "
        "earlier finite checkpoint is kept. To find where it diverges, rerun the same command with "
        f"--config.debug=True: it resumes from step {good} and stops at the first non-finite tensor.",
    )


__all__ = ["Diverged"]
