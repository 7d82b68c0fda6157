"""Orbax checkpointing of the whole TrainState, with clear errors on bad state.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so
a kill during a save leaves the previous checkpoint as the latest usable one.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


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
    """Saves the whole TrainState as `step` (asynchronously; the manager waits on close).

    Example:
      >>> import tempfile
      >>> from gje_jax.train import checkpoint
      >>> mngr = checkpoint.make_manager(tempfile.mkdtemp())
      >>> checkpoint.save(mngr, 3, {"w": jnp.ones(2)}); mngr.wait_until_finished()   # asynchronous, atomic
      >>> mngr.all_steps()
      [3]
      >>> mngr.close()
    """
    mngr.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_or_keep(mngr: ocp.CheckpointManager, state):
    """Restores the latest checkpoint into `state`'s structure, or returns `state` when
    there is none. Raises CheckpointError (files untouched) if it does not fit.

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
    step = mngr.latest_step()
    if step is None:
        return state
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    try:
        return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises several types for corrupt / mismatched trees
        raise CheckpointError(
            f"Cannot restore the checkpoint of step {step} in {mngr.directory}: it is corrupt or was written by a "
            f"different config (method, model or shapes). Nothing was overwritten. Use a new --workdir, or move "
            f"the checkpoints away to start afresh. Cause: {type(e).__name__}: {str(e)[:500]}"
        ) from e
