"""Shared inputs for the tests: random references (numpy float64) and small train configs."""

from importlib.metadata import version

import numpy as np


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for the test session and the processes its tests start (notebook kernels,
    workers): `devices` fake CPU devices (None: the platform's one), and jaxlib 0.10's older
    elemental emitters, which compile the suite's programs about twice as fast as its fusion
    emitters (train steps of the smoke configs: gmje_em 6.0 -> 3.2 s, gje 3.4 -> 1.4 s; the
    suite is compile-bound). Newer jaxlibs dropped that flag (an unknown XLA flag is fatal)
    and compile these programs about as fast without it (gmje_em 3.8-4.4 s on 0.12)."""
    flags = [] if devices is None else [f"--xla_force_host_platform_device_count={devices}"]
    if tuple(int(p) for p in version("jaxlib").split(".")[:2]) < (0, 11):
        flags.append("--xla_cpu_use_fusion_emitters=false")
    return " ".join(flags)


def random_spd(rng, d, cond=None, scale=1.0):
    """A [d, d] SPD matrix; with `cond`, eigenvalues log-spaced between scale/cond and scale."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    if cond is None:
        ev = rng.uniform(0.5, 2.0, size=d) * scale
    else:
        ev = scale * np.logspace(-np.log10(cond), 0, d)
    return (q * ev) @ q.T


def random_mixture(rng, k, d, spread=3.0):
    """(log_weights [K], means [K, D], covs [K, D, D], scale_tril [K, D, D]) in float64."""
    logits = rng.normal(size=k)
    means = rng.normal(size=(k, d)) * spread
    covs = np.stack([random_spd(rng, d) for _ in range(k)])
    return logits, means, covs, np.linalg.cholesky(covs)


def log_softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def train_config(method="gje", **overrides):
    """The library's smoke config of `method` with dotted overrides ("optim.lr": 0.1); an
    override of a field the config does not hold fails (the config is locked)."""
    from gje_jax.train.configs import smoke_config

    c = smoke_config(method)
    for k, v in overrides.items():
        parent = c
        *path, last = k.split(".")
        for p in path:
            parent = parent[p]
        parent[last] = v
    return c


def loss_and_grads(config, mesh):
    """(loss, gradients) of the first batch of `config` on `mesh`, host arrays: the quantity
    the 1-vs-4-device tests compare."""
    import jax

    from gje_jax import methods
    from gje_jax.train import loop
    from gje_jax.train.step import loss_and_updates

    state, _, source, data_sharding = loop.setup(config, mesh)
    batch = loop.global_batch(source, config, 0, data_sharding)
    views = loop.synthetic.views_for(config.data)
    method = methods.build(config.method)

    @jax.jit
    def f(state, batch):
        a, b = views(batch, jax.random.key(3))
        (loss, _), grads = jax.value_and_grad(loss_and_updates, has_aux=True)(state.params, state, a, b, method)
        return loss, grads

    return jax.device_get(f(state, batch))
