r"""Writes API.md, the API reference, from the docstrings of every public name.

  python -m experiments.api_docs            # rewrites API.md
  python -m experiments.api_docs --check    # exit 1 if API.md is out of date

Public names: `__all__` of a module when it has one, else the module's own top-level
functions and classes whose names do not start with '_'. tests/test_docs.py checks that
each has a docstring and that API.md is current.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys

from gje_jax.methods import REGISTRY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = (
    "gje_jax",
    "gje_jax.linalg",
    "gje_jax.mixture",
    "gje_jax.conditional",
    "gje_jax.gaussian",
    "gje_jax.losses",
    "gje_jax.remedies.resampling",
    "gje_jax.remedies.smc",
    "gje_jax.remedies.gng",
    "gje_jax.remedies.em",
    "gje_jax.remedies.reseed",
    "gje_jax.evaluation",
    "gje_jax.calibration",
    "gje_jax.sampling_metrics",
    "gje_jax.models",
    "gje_jax.data.augment",
    "gje_jax.data.images",
    "gje_jax.data.synthetic",
    "gje_jax.data.pipeline",
    "gje_jax.settings",
    "gje_jax.methods",
    "gje_jax.methods.base",
    "gje_jax.methods.shared",
    *REGISTRY.values(),
    "gje_jax.train.configs",
    "gje_jax.train.config_check",
    "gje_jax.train.optim",
    "gje_jax.train.state",
    "gje_jax.train.step",
    "gje_jax.train.loop",
    "gje_jax.train.checkpoint",
    "gje_jax.train.divergence",
    "gje_jax.train.records",
)


def public_names(module) -> list[str]:
    if hasattr(module, "__all__"):
        return [n for n in module.__all__ if not inspect.ismodule(getattr(module, n))]
    return sorted(
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == module.__name__
    )


def _signature(obj) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    # Flax modules: leave out the framework's own fields; no object addresses (unstable).
    flax_module = inspect.isclass(obj) and "parent" in sig.parameters
    params = [p for name, p in sig.parameters.items() if not (flax_module and name in ("parent", "name"))]
    text = re.sub(r" at 0x[0-9a-f]+", "", str(sig.replace(parameters=params)))
    # jax's array type prints by its private module on newer jaxlibs (jax.jaxlib._jax.Array on
    # 0.12, jax.Array on 0.10): one spelling, so API.md is the same on every supported version.
    return re.sub(r"\bjax\.jaxlib\._jax\.Array\b|\bjaxlib\.xla_extension\.ArrayImpl\b", "jax.Array", text)


def _fence_examples(doc: str) -> str:
    """The indented block after an 'Example:' line becomes a fenced python block."""
    lines, out, i = doc.split("\n"), [], 0
    while i < len(lines):
        out.append(lines[i])
        if lines[i].strip() == "Example:":
            j = i + 1
            block = []
            while j < len(lines) and (lines[j].startswith("  ") or not lines[j].strip()):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```python", *inspect.cleandoc("\n".join(block)).split("\n"), "```"]
            i = j
            continue
        i += 1
    return "\n".join(out)


def render() -> str:
    out = [
        "# API reference",
        "",
        "Generated from the docstrings by `python -m experiments.api_docs`; do not edit by hand.",
        "Every example runs as a test (tests/test_examples.py) and assumes",
        "`import jax, jax.numpy as jnp, numpy as np, gje_jax`.",
        "",
    ]
    for name in MODULES:
        module = importlib.import_module(name)
        out += [f"## `{name}`", "", inspect.cleandoc(module.__doc__ or ""), ""]
        for n in public_names(module):
            obj = getattr(module, n)
            kind = "class" if inspect.isclass(obj) else "def" if callable(obj) else "value"
            sig = _signature(obj) if callable(obj) else ""
            out += [f"### `{name}.{n}`", "", f"```python\n{kind} {n}{sig}\n```", ""]
            doc = inspect.getdoc(obj)
            if doc:
                out += [_fence_examples(doc), ""]
    return "\n".join(out).rstrip() + "\n"


def undocumented() -> list[str]:
    missing = []
    for name in MODULES:
        module = importlib.import_module(name)
        if not module.__doc__:
            missing.append(name)
        for n in public_names(module):
            obj = getattr(module, n)
            if (inspect.isclass(obj) or callable(obj)) and not inspect.getdoc(obj):
                missing.append(f"{name}.{n}")
    return missing


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    path = os.path.join(ROOT, "API.md")
    text = render()
    if args.check:
        with open(path) as f:
            if f.read() != text:
                print("API.md is out of date; run python -m experiments.api_docs")
                return 1
        return 0
    with open(path, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
