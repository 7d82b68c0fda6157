"""Declared settings: what a config section may hold, with defaults, documentation and checks.

A component (a method, an encoder, the optimiser) declares its settings as a dict of
`Setting`s. `defaults(specs)` makes the config section; `resolve(section, specs, path)`
checks one and fills what it leaves out:
- a field that is not a setting fails, naming it and the valid ones;
- a value of the wrong type, out of range, NaN or infinite fails, naming the field;
- a setting that does nothing under the section's other values (`when`) fails if it is
  set to anything but its default, saying what would make it count.
Nothing here is traced: configs are checked before anything is compiled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from gje_jax import _validation


@dataclasses.dataclass(frozen=True)
class Setting:
    """One field of a config section.

    kind: 'float' | 'int' | 'bool' | 'choice' | 'ints' (a tuple of positive ints) | 'str';
    low / high: bounds (open where low_open / high_open); choices for 'choice';
    when: (predicate of the section, reason) when the setting is read only under some
      values of the others, e.g. (lambda s: s.estimator == 'ema', "estimator='ema'").

    Example:
      >>> from gje_jax.settings import Setting, resolve
      >>> specs = {"tau": Setting(0.1, "temperature", "float", low=0, low_open=True)}
      >>> resolve({"tau": 0.5}, specs, "config.method").tau
      0.5
    """

    default: Any
    doc: str
    kind: str = "float"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    when: tuple[Callable[[Any], bool], str] | None = None

    def only_when(self, applies: Callable[[Any], bool], reason: str) -> Setting:
        """This setting, read only when applies(section) holds (see `resolve`).

        Example:
          >>> from gje_jax.settings import positive
          >>> positive(0.1, "h").only_when(lambda s: s.kernel == "isotropic", "kernel='isotropic'").when[1]
          "kernel='isotropic'"
        """
        return dataclasses.replace(self, when=(applies, reason))

    def check(self, value, path: str):
        """The value, checked (ints accepted for floats) -> the value as stored."""
        if self.default is None and value is None:
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{path}={value!r} is unknown; valid: {list(self.choices)}.")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{path} must be True or False, got {value!r}.")
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"{path} must be a string, got {value!r}.")
            return value
        if self.kind == "ints":
            vals = tuple(value) if isinstance(value, (tuple, list)) else None
            if vals is None or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in vals):
                raise ValueError(f"{path} must be a tuple of positive integers, got {value!r}.")
            return vals
        integer = self.kind == "int"
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if not ok or isinstance(value, bool):
            raise ValueError(f"{path} must be {'an integer' if integer else 'a number'}, got {value!r}.")
        _validation.check_number(
            value, path, low=self.low, high=self.high, low_open=self.low_open, high_open=self.high_open
        )
        return value if integer else float(value)

    def range_text(self) -> str:
        return _validation.range_text(self.low, self.high, self.low_open, self.high_open)


def number(default: float, doc: str, low=None, high=None, *, low_open=False, high_open=False, when=None) -> Setting:
    """A float setting in [low, high] (open ends with low_open / high_open).

    Example:
      >>> from gje_jax.settings import number
      >>> number(0.5, "a fraction", 0, 1).check(0.25, "config.x")
      0.25
    """
    return Setting(default, doc, "float", low, high, low_open, high_open, when=when)


def positive(default: float, doc: str, when=None) -> Setting:
    """A float setting > 0.

    Example:
      >>> from gje_jax.settings import positive
      >>> positive(0.1, "a temperature").range_text()
      '(0, inf)'
    """
    return Setting(default, doc, "float", 0.0, None, True, when=when)


def nonnegative(default: float, doc: str, when=None) -> Setting:
    """A float setting >= 0.

    Example:
      >>> from gje_jax.settings import nonnegative
      >>> nonnegative(1.0, "a loss weight").range_text()
      '[0, inf)'
    """
    return Setting(default, doc, "float", 0.0, None, when=when)


def fraction(default: float, doc: str, *, high_open=True, low_open=False, when=None) -> Setting:
    """A float setting in [0, 1) (a momentum) or [0, 1] with high_open=False.

    Example:
      >>> from gje_jax.settings import fraction
      >>> fraction(0.99, "an EMA momentum").range_text()
      '[0, 1)'
    """
    return Setting(default, doc, "float", 0.0, 1.0, low_open, high_open, when=when)


def integer(default: int, doc: str, low: int = 1, when=None) -> Setting:
    """An int setting >= low.

    Example:
      >>> from gje_jax.settings import integer
      >>> integer(8, "components").check(3, "config.method.num_components")
      3
    """
    return Setting(default, doc, "int", low, when=when)


def choice(default: str, doc: str, choices, when=None) -> Setting:
    """One of `choices`.

    Example:
      >>> from gje_jax.settings import choice
      >>> choice("diag", "covariance layout", ("diag", "full")).check("full", "config.method.mdn_covariance")
      'full'
    """
    return Setting(default, doc, "choice", choices=tuple(choices), when=when)


def widths(default: tuple, doc: str, when=None) -> Setting:
    """A tuple of positive layer widths.

    Example:
      >>> from gje_jax.settings import widths
      >>> widths((128,), "hidden layers").check([64, 64], "config.method.mdn_hidden")
      (64, 64)
    """
    return Setting(tuple(default), doc, "ints", when=when)


def defaults(specs: Mapping[str, Setting], **fields) -> ml_collections.ConfigDict:
    """A config section holding every setting's default, then `fields` (checked names).

    Example:
      >>> from gje_jax.settings import defaults, positive
      >>> defaults({"tau": positive(0.1, "temperature")}, name="simclr").to_dict()
      {'name': 'simclr', 'tau': 0.1}
    """
    section = ml_collections.ConfigDict({k: s.default for k, s in specs.items()})
    for k, v in fields.items():
        section[k] = v
    return section


def _as_mapping(section) -> dict:
    if isinstance(section, ml_collections.ConfigDict):
        return section.to_dict()
    return dict(section)


def resolve(section, specs: Mapping[str, Setting], path: str, reserved=("name",), owner: str = ""):
    """Checks `section` against `specs` -> a ConfigDict of every setting (defaults filled).

    reserved: fields that select the component itself (e.g. 'name'); kept as they are.
    owner: what the settings belong to, for messages (e.g. "method 'gje'").

    Example:
      >>> from gje_jax.settings import resolve, positive
      >>> specs = {"tau": positive(0.1, "temperature")}
      >>> resolve({"name": "simclr"}, specs, "config.method").to_dict()    # defaults fill the rest
      {'name': 'simclr', 'tau': 0.1}
      >>> try:
      ...     resolve({"name": "simclr", "tua": 1.0}, specs, "config.method", owner="method 'simclr'")
      ... except ValueError as e:
      ...     print(e)
      config.method.tua is not a setting of method 'simclr'; its settings: ['tau'].
    """
    given = _as_mapping(section)
    owner = owner or path
    unknown = sorted(k for k in given if k not in specs and k not in reserved)
    if unknown:
        fields = ", ".join(f"{path}.{k}" for k in unknown)
        verb = "is not a setting" if len(unknown) == 1 else "are not settings"
        raise ValueError(f"{fields} {verb} of {owner}; its settings: {sorted(specs)}.")
    out = {k: given[k] for k in reserved if k in given}
    for k, spec in specs.items():
        out[k] = spec.check(given[k], f"{path}.{k}") if k in given else spec.default
    resolved = ml_collections.ConfigDict(out)
    for k, spec in specs.items():
        if spec.when is None or k not in given:
            continue
        applies, reason = spec.when
        if not applies(resolved) and out[k] != spec.default:
            raise ValueError(
                f"{path}.{k}={out[k]!r} has no effect here: {owner} reads it only with {reason}. "
                f"Leave it at its default ({spec.default!r}) or change the setting it depends on."
            )
    return resolved


def describe(specs: Mapping[str, Setting]) -> str:
    """One line per setting: name, default, range or choices, doc (for docs and errors).

    Example:
      >>> from gje_jax.settings import describe, positive
      >>> print(describe({"tau": positive(0.1, "softmax temperature")}))
      tau = 0.1  (0, inf)  softmax temperature
    """
    lines = []
    for k, s in specs.items():
        if s.kind == "choice":
            rng = "|".join(map(str, s.choices))
        elif s.kind in ("float", "int"):
            rng = s.range_text()
        else:
            rng = s.kind
        lines.append(f"{k} = {s.default!r}  {rng}  {s.doc}")
    return "\n".join(lines)
