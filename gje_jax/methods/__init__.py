"""The method registry: one module per method, one line per method in REGISTRY.

A method module declares its settings (SETTINGS, with defaults, documentation and checks),
how it shrinks for a smoke run (SMOKE), which settings shape its checkpointed state
(IDENTITY), optional cross-section rules (`check(settings, config)`), and `build(settings)
-> Method`. Everything else asks this registry and the Method's capabilities
(`density`, `conditional`, `batch_density`, `target_network`, `probabilistic`), never a
method's name. README, "Adding a method", lists the steps.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import ml_collections

from gje_jax import settings as settings_lib
from gje_jax.methods.base import Embeddings, Method, ema_update

# name -> module path. Adding a method: its module, one line here, its tests.
REGISTRY: dict[str, str] = {
    "gje": "gje_jax.methods.gje",
    "gmje": "gje_jax.methods.gmje",
    "gmje_em": "gje_jax.methods.gmje_em",
    "gmje_mdn": "gje_jax.methods.gmje_mdn",
    "gmje_gng": "gje_jax.methods.gmje_gng",
    "gmje_smc": "gje_jax.methods.gmje_smc",
    "simclr": "gje_jax.methods.simclr",
    "vicreg": "gje_jax.methods.vicreg",
    "barlow_twins": "gje_jax.methods.barlow_twins",
    "predictor": "gje_jax.methods.predictor",
}


def names() -> tuple[str, ...]:
    """The registered method names, in registry order.

    Example:
      >>> from gje_jax import methods
      >>> methods.names()[:2]
      ('gje', 'gmje')
    """
    return tuple(REGISTRY)


def module(name: str) -> ModuleType:
    """The module of a registered method (its SETTINGS, SMOKE, IDENTITY, build, ...).

    Example:
      >>> from gje_jax import methods
      >>> methods.module("gmje").TITLE
      'GMJE prototypes (SGD)'
    """
    if name not in REGISTRY:
        raise ValueError(f"config.method.name={name!r} is unknown; valid methods: {sorted(REGISTRY)}.")
    return importlib.import_module(REGISTRY[name])


def title(name: str) -> str:
    """The method's label for tables and figures.

    Example:
      >>> from gje_jax import methods
      >>> methods.title("gmje_smc")
      'GMJE SMC bank'
    """
    return module(name).TITLE


def default_settings(name: str, **values) -> ml_collections.ConfigDict:
    """config.method for `name`: its name and every setting at its default, then `values`
    (each must be one of its settings).

    Example:
      >>> from gje_jax import methods
      >>> m = methods.default_settings("simclr", tau=0.2)
      >>> m.to_dict()
      {'name': 'simclr', 'tau': 0.2}
    """
    specs = module(name).SETTINGS
    section = settings_lib.defaults(specs, name=name)
    for k, v in values.items():
        if k not in specs:
            raise ValueError(f"{k!r} is not a setting of method {name!r}; its settings: {sorted(specs)}.")
        section[k] = v
    return section


def apply_tuning(section, tuning, keep=()) -> ml_collections.ConfigDict:
    """Sets `tuning` on config.method `section` where its method reads it -> the section.

    tuning: an experiment's method settings meant for every method that has them (e.g.
    {'num_components': 8, 'bank_size': 2048}); a key the method does not have, one that has
    no effect under its other settings (see Setting.when), or one in `keep` is skipped.

    Example:
      >>> from gje_jax import methods
      >>> m = methods.default_settings("gmje_smc")
      >>> m = methods.apply_tuning(m, {"bank_size": 64, "tau": 0.2, "num_components": 3})
      >>> m.bank_size, m.tau                      # tau is read only by the contrastive bank loss
      (64, 0.1)
    """
    specs = module(section.name).SETTINGS
    old = {}
    for k, v in dict(tuning or {}).items():
        if k in specs and k not in keep:
            old[k] = section[k]
            section[k] = v
    # Judged once every value is in, so the order of `tuning` does not matter.
    for k, v in old.items():
        when = specs[k].when
        if when is not None and not when[0](section):
            section[k] = v
    return section


def tuned(name: str, tuning=None, *, smoke: bool = False, **values) -> ml_collections.ConfigDict:
    """default_settings(name, **values), then the method's SMOKE values (with smoke=True),
    then `tuning` where the method reads it (see `apply_tuning`); `values` win over both.

    Example:
      >>> from gje_jax import methods
      >>> methods.tuned("simclr", {"tau": 0.2, "num_components": 8}).to_dict()   # simclr has no K
      {'name': 'simclr', 'tau': 0.2}
    """
    section = default_settings(name, **values)
    if smoke:
        apply_tuning(section, module(name).SMOKE, keep=values)
    return apply_tuning(section, tuning, keep=values)


def resolve(section, config=None) -> ml_collections.ConfigDict:
    """Checks config.method (name, then every field: known, typed, in range, finite, with an
    effect) and the method's rules across sections -> the full settings.

    Example:
      >>> from gje_jax import methods
      >>> try:
      ...     methods.resolve({"name": "simclr", "num_components": 8})
      ... except ValueError as e:
      ...     print(str(e).split(";")[0])
      config.method.num_components is not a setting of method 'simclr'
    """
    name = section["name"] if "name" in section else None
    if name is None:
        raise ValueError(f"config.method.name is missing; valid methods: {sorted(REGISTRY)}.")
    mod = module(name)
    s = settings_lib.resolve(section, mod.SETTINGS, "config.method", owner=f"method {name!r}")
    if config is not None and hasattr(mod, "check"):
        mod.check(s, config)
    return s


def build(section, config=None) -> Method:
    """The Method for config.method (resolved and checked first; see `resolve`).

    Example:
      >>> from gje_jax import methods
      >>> methods.build(methods.default_settings("gmje_em")).name
      'gmje_em'
    """
    s = resolve(section, config)
    return module(s.name).build(s)


def identity_fields(name: str) -> tuple[str, ...]:
    """The settings of `name` whose change makes its checkpoints unusable, as config paths.

    Example:
      >>> from gje_jax import methods
      >>> methods.identity_fields("gmje_gng")
      ('method.name', 'method.gng_capacity', 'method.gng_covariance')
    """
    return ("method.name",) + tuple(f"method.{k}" for k in module(name).IDENTITY)


def wide_embedding(name: str) -> bool:
    """Whether the method's loss regularises a wide projector output (VICReg, Barlow Twins):
    recipes widen the embedding for it.

    Example:
      >>> from gje_jax import methods
      >>> methods.wide_embedding("vicreg"), methods.wide_embedding("gmje")
      (True, False)
    """
    return bool(getattr(module(name), "WIDE_EMBEDDING", False))


__all__ = [
    "REGISTRY",
    "apply_tuning",
    "Embeddings",
    "Method",
    "build",
    "default_settings",
    "ema_update",
    "identity_fields",
    "module",
    "names",
    "resolve",
    "title",
    "tuned",
    "wide_embedding",
]
