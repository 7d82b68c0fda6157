"""The training driver: data, mesh, jit, checkpoints, logging. Called by experiments/main.py."""

from __future__ import annotations

import functools
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gje_jax.data import ArraySource, augment, batch_indices, images, local_slice, synthetic
from gje_jax.models import build_network
from gje_jax.train import checkpoint, config_check
from gje_jax.train.methods import get_method
from gje_jax.train.state import create_state, make_optimizer, train_step, with_probe_optimizer

# Fields whose change makes an existing workdir's checkpoints unusable.
_IDENTITY_FIELDS = (
    "method.name",
    "method.estimator",
    "method.num_components",
    "method.mdn_covariance",
    "method.predictor_norm",
    "method.gng_capacity",
    "method.gng_covariance",
    "method.bank_size",
    "model",
    "data.name",
    "data.dim",
)


def maybe_initialize_distributed(d) -> None:
    """jax.distributed from config.distributed or the JAX_COORDINATOR_ADDRESS /
    JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables (multi-host).

    Example:
      >>> from gje_jax.train import loop
      >>> from experiments.configs.common import base_config
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


def _select(config, path):
    val = config
    for p in path.split("."):
        val = val[p]
    return val


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
        self.stop = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def global_batch(source: ArraySource, config, step: int, sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process loads its slice of the step's global batch and assembles the global array.

    A process-local source (each process holds its own share of the data) is batched
    within that share; otherwise every process indexes the same global permutation.

    Example:
      >>> from experiments.configs import synthetic_views
      >>> from gje_jax.train import loop
      >>> config = synthetic_views.get_config("runlocal")
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

    'clustered' is generated in memory; any other name is an image dataset read through
    TFDS (gje_jax.data.images), this process's share only.

    Example:
      >>> from experiments.configs import synthetic_views
      >>> from gje_jax.train import loop
      >>> source, views_fn, num_classes = loop.load_data(synthetic_views.get_config("runlocal"))
      >>> source.arrays["x"].shape, num_classes
      ((512, 8), 0)
    """
    if config.data.name == "clustered":
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
      >>> from experiments.configs import synthetic_views
      >>> from gje_jax.train import loop
      >>> config = synthetic_views.get_config("runlocal")
      >>> state, step_fn, source, sharding = loop.setup(config)
      >>> int(state.step), config.batch_size % sharding.mesh.size   # the batch splits over the devices
      (0, 0)
    """
    mesh = mesh or make_mesh()
    config_check.validate(config, num_devices=mesh.size)
    source, views_fn, num_classes = data if data is not None else load_data(config)
    data = source.arrays
    network = build_network(config.model)
    method = get_method(config.method)
    tx = make_optimizer(config.optim, config.num_steps)
    if num_classes:
        tx = with_probe_optimizer(tx, config.data.probe_lr)
    replicated = NamedSharding(mesh, P())
    data_sharding = NamedSharding(mesh, P("data"))
    example = views_fn({k: jnp.asarray(v[:2]) for k, v in data.items()}, jax.random.key(0))[0]
    init = jax.jit(
        functools.partial(
            create_state, network=network, method=method, example_input=example, tx=tx, num_classes=num_classes
        ),
        out_shardings=replicated,
    )
    state = init(jax.random.key(config.seed))
    step = functools.partial(
        train_step,
        method=method,
        views_fn=views_fn,
        target_momentum=config.method.target_momentum,
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
      >>> from experiments.configs import synthetic_views
      >>> from gje_jax.train import loop
      >>> config = synthetic_views.get_config("runlocal")
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


def _check_workdir_config(config, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    new = json.loads(config.to_json())
    for field in _IDENTITY_FIELDS:
        try:
            a, b = _select(old, field), _select(new, field)
        except KeyError:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            # A field added after the old run was written defaults to the old behaviour.
            b = {k: v for k, v in b.items() if k in a}
        if a != b:
            raise checkpoint.CheckpointError(
                f"{workdir} holds a run with config.{field}={a!r}, this config has {b!r}. Its checkpoints cannot "
                f"be resumed by this config; use a new --workdir. Nothing was changed."
            )


def train_and_evaluate(config, workdir: str, *, progress: bool = True, stop_after: int | None = None):
    """Trains config.num_steps steps in `workdir`, resuming from its latest checkpoint.

    stop_after: stop (with a checkpoint) once this step is reached; for tests of resume.
    Returns (final state, last logged metrics).

    Example:
      >>> import tempfile
      >>> from experiments.configs import synthetic_views
      >>> from gje_jax.train import loop
      >>> config = synthetic_views.get_config("runlocal")
      >>> workdir = tempfile.mkdtemp()
      >>> state, last = loop.train_and_evaluate(config, workdir, progress=False, stop_after=10)
      >>> int(state.step), sorted(__import__("os").listdir(workdir))[:2]
      (10, ['checkpoints', 'config.json'])
      >>> state, last = loop.train_and_evaluate(config, workdir, progress=False)   # resumes at step 10
      >>> int(state.step) == config.num_steps
      True
    """
    maybe_initialize_distributed(config.distributed)
    mesh = make_mesh()
    config_check.validate(config, num_devices=mesh.size)
    os.makedirs(workdir, exist_ok=True)
    _check_workdir_config(config, workdir)
    state, step_fn, source, data_sharding = setup(config, mesh)
    mngr = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
    state = checkpoint.restore_or_keep(mngr, state)
    start = int(jax.device_get(state.step))
    is_main = jax.process_index() == 0
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))
    writer = None
    if is_main:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(os.path.join(workdir, "tb"))
    metrics_file = open(os.path.join(workdir, "metrics.jsonl"), "a") if is_main else None
    key = jax.random.key(config.seed)
    end = config.num_steps if stop_after is None else min(stop_after, config.num_steps)
    bar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.num_steps, initial=start, desc=f"{config.method.name}", dynamic_ncols=True)
    last = {}
    t_last, n_last = time.perf_counter(), start
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
                    last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    last["examples_per_s"] = (step - n_last) * config.batch_size / max(now - t_last, 1e-9)
                    t_last, n_last = now, step
                    if metrics_file:  # logged before the check below, so a NaN's diagnostics are kept
                        metrics_file.write(json.dumps({"step": step, **last}) + "\n")
                        metrics_file.flush()
                    if not np.isfinite(last["loss"]):
                        raise FloatingPointError(
                            f"loss is {last['loss']} at step {step} (method {config.method.name}); metrics: {last}. "
                            "Rerun with --config.debug=True to name the first non-finite tensor."
                        )
                    if writer:
                        for k, v in last.items():
                            writer.add_scalar(f"train/{k}", v, step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{last['loss']:.4f}", ex_s=f"{last['examples_per_s']:.0f}")
                if step % config.checkpoint_every == 0 or step == end or flag.stop:
                    checkpoint.save(mngr, step, state)
                if flag.stop:
                    print(f"Interrupted: saved step {step} in {workdir}; rerun the same command to resume.")
                    break
    finally:
        mngr.wait_until_finished()
        mngr.close()
        if bar is not None:
            bar.close()
        if writer:
            writer.close()
        if metrics_file:
            metrics_file.close()
    return state, last
