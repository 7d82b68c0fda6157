"""Orbax checkpointing of the whole TrainState, with clear errors on bad state.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so
a kill during a save leaves the previous checkpoint as the latest usable one.
"""

from __future__ import annotations

import os
import shutil

import jax
import orbax.checkpoint as ocp

from gje_jax import _validation


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored into this run's state.

    Example:
      >>> from gje_jax.train import checkpoint
      >>> issubclass(checkpoint.CheckpointError, Exception)        # raised for unusable or foreign checkpoints
      True
    """


def make_manager(workdir: str, *, keep: int = 3) -> ocp.CheckpointManager:
    """An orbax CheckpointManager over WORKDIR/checkpoints keeping the last `keep` steps.

    Example:
      >>> import tempfile
      >>> from gje_jax.train import checkpoint
      >>> mngr = checkpoint.make_manager(tempfile.mkdtemp(), keep=2)
      >>> checkpoint.save(mngr, 1, {"w": jnp.ones(3)}); mngr.wait_until_finished()
      >>> mngr.latest_step()
      1
      >>> mngr.close()
    """
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
    """Saves the whole TrainState as `step` (asynchronously; the manager waits on close), all
    but its divergence record (-1 whenever a state is saved; restore sets it to -1).

    Example:
      >>> import tempfile
      >>> from gje_jax.train import checkpoint
      >>> mngr = checkpoint.make_manager(tempfile.mkdtemp())
      >>> checkpoint.save(mngr, 3, {"w": jnp.ones(2)}); mngr.wait_until_finished()   # asynchronous, atomic
      >>> mngr.all_steps()
      [3]
      >>> mngr.close()
    """
    mngr.save(step, args=ocp.args.StandardSave(_stored(state)), force=True)


def first_nonfinite(state) -> str | None:
    """The path of the first floating leaf of `state` holding NaN/Inf, or None.

    Example:
      >>> from gje_jax.train import checkpoint
      >>> checkpoint.first_nonfinite({"a": jnp.ones(2), "b": jnp.array([0.0, jnp.nan])})
      "['b']"
      >>> checkpoint.first_nonfinite({"a": jnp.ones(2), "step": jnp.int32(3)}) is None
      True
    """
    return _validation.first_nonfinite_leaf(state)


def discard_after(workdir: str, step: int) -> list[int]:
    """Moves the checkpoints of steps after `step` to WORKDIR/checkpoints_discarded/ (kept,
    not deleted), so that a run resumes from `step`. Call before make_manager. -> moved steps.

    Example:
      >>> import tempfile
      >>> from gje_jax.train import checkpoint
      >>> d = tempfile.mkdtemp()
      >>> mngr = checkpoint.make_manager(d, keep=3)
      >>> for step in (5, 10, 15):
      ...     checkpoint.save(mngr, step, {"w": jnp.ones(2)})
      >>> mngr.close()
      >>> checkpoint.discard_after(d, 5), checkpoint.make_manager(d).all_steps()
      ([10, 15], [5])
    """
    root = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(root):
        return []
    moved = []
    for name in sorted(os.listdir(root)):
        if name.isdigit() and int(name) > step:
            dest = os.path.join(workdir, "checkpoints_discarded")
            os.makedirs(dest, exist_ok=True)
            target = os.path.join(dest, name)
            if os.path.exists(target):
                target = f"{target}.{len(os.listdir(dest))}"
            shutil.move(os.path.join(root, name), target)
            moved.append(int(name))
    return moved


def _stored(state):
    # A TrainState says what it checkpoints (TrainState.checkpointed); any other pytree is saved whole.
    return state.checkpointed() if hasattr(state, "checkpointed") else state


def _unstored(restored, state):
    return state.restored(restored) if hasattr(state, "restored") else restored


def restore_or_keep(mngr: ocp.CheckpointManager, state, step: int | None = None):
    """Restores checkpoint `step` (default: the latest) into `state`'s structure, or
    returns `state` when there is none. Raises CheckpointError (files untouched) if it
    does not fit or is corrupt, naming the step and the other steps it could resume from.

    Example:
      >>> import tempfile
      >>> from gje_jax.train import checkpoint
      >>> mngr = checkpoint.make_manager(tempfile.mkdtemp())
      >>> checkpoint.restore_or_keep(mngr, {"w": jnp.zeros(2)})["w"].tolist()   # nothing saved: kept as is
      [0.0, 0.0]
      >>> checkpoint.save(mngr, 5, {"w": jnp.ones(2)}); mngr.wait_until_finished()
      >>> checkpoint.restore_or_keep(mngr, {"w": jnp.zeros(2)})["w"].tolist()
      [1.0, 1.0]
      >>> mngr.close()
    """
    steps = mngr.all_steps()
    if step is None:
        step = mngr.latest_step()
        if step is None:
            return state
    elif step not in steps:
        raise CheckpointError(
            f"config.resume_from_step={step} but {mngr.directory} holds steps {sorted(steps)}; pick one of them."
        )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _stored(state))
    try:
        return _unstored(mngr.restore(step, args=ocp.args.StandardRestore(abstract)), state)
    except Exception as e:  # orbax raises several types for corrupt / mismatched trees
        others = sorted(s for s in steps if s != step)
        hint = (
            f" Earlier checkpoints: steps {others}; resume from one with --config.resume_from_step=N (later ones "
            "are moved to checkpoints_discarded/, not deleted)."
            if others
            else ""
        )
        raise CheckpointError(
            f"Cannot restore the checkpoint of step {step} in {mngr.directory}: it is corrupt or was written by a "
            f"different config (method, model or shapes). Nothing was overwritten.{hint} Or use a new --workdir. "
            f"Cause: {type(e).__name__}: {str(e)[:300]}"
        ) from None
