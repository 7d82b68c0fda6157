"""The training driver: data, mesh, jit, checkpoints, logging. Called by experiments/main.py."""

from __future__ import annotations

import functools
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gje_jax import methods
from gje_jax.data import ArraySource, augment, batch_indices, images, local_slice, synthetic
from gje_jax.models import build_network
from gje_jax.train import checkpoint, config_check, divergence, records
from gje_jax.train import workdir as workdir_lib
from gje_jax.train.divergence import Diverged  # noqa: F401 (raised by train)
from gje_jax.train.optim import make_optimizer, make_schedule, scale_method_lr, with_probe_optimizer
from gje_jax.train.state import create_state
from gje_jax.train.step import train_step

# Fields whose change makes an existing workdir's checkpoints unusable (besides the
# method's own, methods.identity_fields).
_IDENTITY_FIELDS = ("model", "data.name", "data.dim")


def maybe_initialize_distributed(d) -> None:
    """jax.distributed from config.distributed or the JAX_COORDINATOR_ADDRESS /
    JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables (multi-host).

    Example:
      >>> from gje_jax.train import loop
      >>> from gje_jax.train.configs import base_config
      >>> loop.maybe_initialize_distributed(base_config().distributed)   # single host: nothing to do
      >>> jax.process_count()
      1
    """
    addr = d.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num = d.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "1"))
    if num <= 1:
        return
    pid = d.process_id if d.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "0"))
    if "cpu" in os.environ.get("JAX_PLATFORMS", "cpu"):
        # Cross-process collectives on CPU need gloo (set before initialising).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(addr, num_processes=num, process_id=pid)


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis 'data'.

    Example:
      >>> from gje_jax.train import loop
      >>> mesh = loop.make_mesh()                                  # one 'data' axis over every device
      >>> mesh.axis_names, mesh.size == jax.device_count()
      (('data',), True)
    """
    return Mesh(np.asarray(jax.devices()), ("data",))


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop saves at the next step boundary and exits."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.stop:  # a second signal: the first did not end the run (a blocked write, say)
            raise KeyboardInterrupt(f"signal {signum} received twice: stopping without a final save")
        self.stop = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def global_batch(source: ArraySource, config, step: int, sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process loads its slice of the step's global batch and assembles the global array.

    A process-local source (each process holds its own share of the data) is batched
    within that share; otherwise every process indexes the same global permutation.

    Example:
      >>> from gje_jax.train.configs import smoke_config
      >>> from gje_jax.train import loop
      >>> config = smoke_config()
      >>> state, step_fn, source, sharding = loop.setup(config)
      >>> batch = loop.global_batch(source, config, step=0, sharding=sharding)
      >>> batch["x"].shape == (config.batch_size, config.data.dim)
      True
    """
    if source.process_local:
        per_process = config.batch_size // jax.process_count()
        local = source.get(batch_indices(config.seed, step, len(source), per_process))
        return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
    idx = batch_indices(config.seed, step, len(source), config.batch_size)
    local = source.get(idx[local_slice(config.batch_size, jax.process_index(), jax.process_count())])
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def load_data(config):
    """-> (source, views_fn, num_classes of the online probe (0: none)).

    'clustered' and 'alignment' are generated in memory; any other name is an image dataset
    read through TFDS (gje_jax.data.images), this process's share only.

    Example:
      >>> from gje_jax.train.configs import smoke_config
      >>> from gje_jax.train import loop
      >>> source, views_fn, num_classes = loop.load_data(smoke_config())
      >>> source.arrays["x"].shape, num_classes
      ((512, 8), 0)
    """
    if config.data.name in ("clustered", "alignment"):
        data = synthetic.load(config.data, config.seed)
        return ArraySource(data), synthetic.views_for(config.data), 0
    d = config.data
    data = images.load_split(d, d.train_split, jax.process_index(), jax.process_count(), progress=True)
    if len(data["image"]) * jax.process_count() < config.batch_size:
        raise ValueError(
            f"config.batch_size={config.batch_size} exceeds the {len(data['image'])} training images of "
            f"{d.name!r} per process."
        )
    mean, std = (tuple(d.mean), tuple(d.std)) if d.mean else images.channel_stats(data["image"])
    views_fn = augment.make_views(augment.get_recipe(d.augment), mean, std)
    return ArraySource(data, process_local=True), views_fn, (d.num_classes if d.online_probe else 0)


def setup(config, mesh: Mesh | None = None, data=None):
    """Builds (state, step_fn, source, shardings); reads data but writes nothing.

    data: the result of load_data(config), when the caller already has it.

    Example:
      >>> from gje_jax.train.configs import smoke_config
      >>> from gje_jax.train import loop
      >>> config = smoke_config()
      >>> state, step_fn, source, sharding = loop.setup(config)
      >>> int(state.step), config.batch_size % sharding.mesh.size   # the batch splits over the devices
      (0, 0)
    """
    mesh = mesh or make_mesh()
    config_check.validate(config, num_devices=mesh.size)
    source, views_fn, num_classes = data if data is not None else load_data(config)
    data = source.arrays
    network = build_network(config.model)
    method = methods.build(config.method, config)
    tx = scale_method_lr(make_optimizer(config.optim, config.num_steps), method.lr_scale)
    if num_classes:
        tx = with_probe_optimizer(tx, config.data.probe_lr)
    replicated = NamedSharding(mesh, P())
    data_sharding = NamedSharding(mesh, P("data"))
    example, example_target = views_fn({k: jnp.asarray(v[:2]) for k, v in data.items()}, jax.random.key(0))
    init = jax.jit(
        functools.partial(
            create_state,
            network=network,
            method=method,
            example_input=example,
            tx=tx,
            num_classes=num_classes,
            example_target=example_target,
        ),
        out_shardings=replicated,
    )
    state = init(jax.random.key(config.seed))
    step = functools.partial(
        train_step,
        method=method,
        views_fn=views_fn,
        debug=bool(config.get("debug", False)),
    )
    out_shardings, donate = (replicated, replicated), (0,)
    if config.get("debug", False):
        # The checks ride along as an Error value; run_step turns it into an exception.
        # No donation here: with jaxlib 0.10 a checkified step that donates its state
        # returned a deleted buffer for a leaf it passes through (a segfault on next use).
        step = checkify.checkify(step, errors=checkify.user_checks)
        out_shardings, donate = (replicated, out_shardings), ()
    step_fn = jax.jit(
        step,
        in_shardings=(replicated, data_sharding, replicated),
        out_shardings=out_shardings,
        donate_argnums=donate,
    )
    return state, step_fn, source, data_sharding


def run_step(config, step_fn, state, batch, key):
    """One call of setup's step_fn -> (state, metrics); in debug mode, raises
    FloatingPointError naming the step, the method and the first non-finite tensor.

    Example:
      >>> from gje_jax.train.configs import smoke_config
      >>> from gje_jax.train import loop
      >>> config = smoke_config()
      >>> state, step_fn, source, sharding = loop.setup(config)
      >>> state, metrics = loop.run_step(config, step_fn, state, loop.global_batch(source, config, 0, sharding), jax.random.key(0))
      >>> int(state.step)
      1
    """
    if not config.get("debug", False):
        return step_fn(state, batch, key)
    err, (state, metrics) = step_fn(state, batch, key)
    msg = err.get()
    if msg:
        raise FloatingPointError(
            f"debug check failed in method {config.method.name!r}: {msg.splitlines()[0]}. "
            "The last saved checkpoint is intact; see the named tensor."
        )
    return state, metrics


def _file_writers(writer) -> list:
    # tensorboardX sets all_writers to None once the writer is closed.
    return list((getattr(writer, "all_writers", None) or {}).values())


def _tensorboard_dead(writer) -> bool:
    for fw in _file_writers(writer):
        worker = getattr(getattr(fw, "event_writer", None), "_worker", None)
        if worker is not None and not worker.is_alive():
            return True
    return False


def _check_tensorboard(writer, workdir: str) -> None:
    """tensorboardX writes from a thread; once that thread has died (a failed write), the next
    add_scalar blocks forever on its full queue. Stop with the reason instead of hanging."""
    if _tensorboard_dead(writer):
        reason = "no space left on the device" if os.statvfs(workdir).f_bavail == 0 else "see its error above"
        raise workdir_lib.WorkdirError(
            f"TensorBoard's event writer in {workdir}/tb stopped ({reason}); every checkpoint completed before "
            "this is intact. Free space or fix permissions, then rerun the same command to resume."
        )


def _close_quietly(mngr, bar, writer, metrics_file, failed: bool) -> None:
    """Closes everything; when the run already failed, a second error while closing (a save
    that hit the same full disk, say) is not allowed to bury the first."""
    for close in (
        mngr.wait_until_finished,
        mngr.close,
        getattr(bar, "close", None),
        None if writer is None or _tensorboard_dead(writer) else writer.close,  # closing a dead one blocks
        getattr(metrics_file, "close", None),
    ):
        if close is None:
            continue
        try:
            close()
        except Exception:
            if not failed:
                raise
    if failed and writer is not None:
        # A close that failed (a full disk) leaves tensorboardX's event files open, and its
        # atexit hook would flush them again and print the same OSError after the run's one
        # error line. What they held is lost either way; mark them closed.
        for fw in _file_writers(writer):
            event_writer = getattr(fw, "event_writer", None)
            if event_writer is not None and hasattr(event_writer, "_closed"):
                event_writer._closed = True


def train(config, workdir: str, *, progress: bool = True, stop_after: int | None = None):
    """Trains config.num_steps steps in `workdir`, resuming from its latest checkpoint.

    stop_after: stop (with a checkpoint) once this step is reached; for tests of resume.
    Returns (final state, last logged metrics).

    Example:
      >>> import tempfile
      >>> from gje_jax.train.configs import smoke_config
      >>> from gje_jax.train import loop
      >>> config = smoke_config()
      >>> workdir = tempfile.mkdtemp()
      >>> state, last = loop.train(config, workdir, progress=False, stop_after=10)
      >>> int(state.step), sorted(__import__("os").listdir(workdir))[:2]
      (10, ['checkpoints', 'config.json'])
      >>> state, last = loop.train(config, workdir, progress=False)   # resumes at step 10
      Resumed from step 10 in ...
      >>> int(state.step) == config.num_steps
      True
    """
    maybe_initialize_distributed(config.distributed)
    mesh = make_mesh()
    config_check.validate(config, num_devices=mesh.size)
    is_main = jax.process_index() == 0
    workdir = workdir_lib.prepare(workdir)
    lock = workdir_lib.Lock(workdir) if is_main else None
    if lock is not None:
        lock.acquire()
    try:
        return _train(config, workdir, mesh, progress=progress, stop_after=stop_after)
    except Exception as e:
        reason = workdir_lib.write_failure(e)
        if reason is None:
            raise
        raise workdir_lib.WorkdirError(
            f"Writing to {workdir} failed ({reason}); every checkpoint completed before this is intact. "
            "Free space or fix permissions, then rerun the same command to resume."
        ) from e
    finally:
        if lock is not None:
            lock.release()


def _train(config, workdir, mesh, *, progress, stop_after):
    is_main = jax.process_index() == 0
    old = workdir_lib.read_config(workdir)
    workdir_lib.check_config(config, workdir, old, methods.identity_fields(config.method.name) + _IDENTITY_FIELDS)
    state, step_fn, source, data_sharding = setup(config, mesh)
    resume_from = config.get("resume_from_step", -1)
    if resume_from >= 0 and is_main:
        moved = checkpoint.discard_after(workdir, resume_from)
        if moved:
            print(f"Resuming from step {resume_from}: later checkpoints {moved} moved to checkpoints_discarded/.")
    mngr = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
    try:
        state = checkpoint.restore_or_keep(mngr, state, step=resume_from if resume_from >= 0 else None)
        divergence.check_restored(mngr, state, config)
    except BaseException:
        mngr.close()
        raise
    start = int(jax.device_get(state.step))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if is_main:
        if start:
            dropped = workdir_lib.truncate_metrics(metrics_path, start)
            print(
                f"Resumed from step {start} in {workdir}" + (f" ({dropped} later records dropped)." if dropped else ".")
            )
        workdir_lib.write_config(config, workdir, old, start)
        records.append_run_record(workdir, start)
    writer = None
    if is_main:
        from tensorboardX import SummaryWriter

        # purge_step hides the events (step >= it) a killed segment wrote after its last checkpoint.
        # A deep queue: if the writer thread dies, the puts of the next log steps cannot fill it
        # (and block) before _check_tensorboard sees the dead thread.
        writer = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start + 1 if start else None, max_queue=4096)
    metrics_file = open(metrics_path, "a") if is_main else None
    key = jax.random.key(config.seed)
    end = config.num_steps if stop_after is None else min(stop_after, config.num_steps)
    bar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.num_steps, initial=start, desc=f"{config.method.name}", dynamic_ncols=True)
    last = {}
    schedule = make_schedule(config.optim, config.num_steps)
    t_last, n_last = time.perf_counter(), start
    failed = False
    try:
        with _StopFlag() as flag:
            step = start
            while step < end:
                batch = global_batch(source, config, step, data_sharding)
                state, metrics = run_step(config, step_fn, state, batch, key)
                step += 1
                if bar is not None:
                    bar.update(1)
                if step % config.log_every == 0 or step == end:
                    last, at = jax.device_get((metrics, state.diverged_at))
                    last = {k: float(v) for k, v in last.items()}
                    last["lr"] = float(schedule(step - 1))  # the rate of this step's update
                    now = time.perf_counter()
                    last["examples_per_s"] = (step - n_last) * config.batch_size / max(now - t_last, 1e-9)
                    t_last, n_last = now, step
                    # The diverging step's record is kept for its diagnostics; later steps were no-ops.
                    if metrics_file and (at < 0 or at == step):
                        metrics_file.write(workdir_lib.metrics_line(step, last) + "\n")
                        metrics_file.flush()
                    divergence.stop_if_diverged(mngr, state, config, at)
                    if writer:
                        _check_tensorboard(writer, workdir)
                        for k, v in last.items():
                            writer.add_scalar(f"train/{k}", v, step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{last['loss']:.4f}", ex_s=f"{last['examples_per_s']:.0f}")
                if step % config.checkpoint_every == 0 or step == end or flag.stop:
                    divergence.save(mngr, step, state, config)
                if flag.stop:
                    print(f"Interrupted: saved step {step} in {workdir}; rerun the same command to resume.")
                    break
    except BaseException:
        failed = True
        raise
    finally:
        _close_quietly(mngr, bar, writer, metrics_file, failed)
    return state, last
