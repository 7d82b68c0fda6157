"""Runs the example in the docstring of every public function and class (doctest), so
the API reference (API.md, generated from the same docstrings) cannot rot.

Examples assume `import jax, jax.numpy as jnp, numpy as np, gje_jax`; module docstrings
hold prose, not examples.
"""

import doctest
import importlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gje_jax
from experiments.api_docs import MODULES, public_names


def _public_objects():
    """{defining module name: [public objects defined there]} over every API module."""
    out, seen = {}, set()
    for name in MODULES:
        mod = importlib.import_module(name)
        for n in public_names(mod):
            obj = getattr(mod, n)
            if id(obj) in seen or not callable(obj):  # values (a registry dict) have no example
                continue
            seen.add(id(obj))
            out.setdefault(inspect.unwrap(obj).__module__, []).append(obj)
    return out


OBJECTS = _public_objects()


def test_every_public_name_has_an_example():
    missing = [
        f"{mod}.{getattr(o, '__name__', o)}"
        for mod, objs in OBJECTS.items()
        for o in objs
        if ">>>" not in (o.__doc__ or "")
    ]
    assert not missing, f"public names without a docstring example: {missing}"


@pytest.mark.parametrize("module", sorted(OBJECTS))
def test_docstring_examples_run(module):
    mod = importlib.import_module(module)
    globs = {**vars(mod), "jax": jax, "jnp": jnp, "np": np, "gje_jax": gje_jax}
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    ran = 0
    for obj in OBJECTS[module]:
        for test in finder.find(obj, name=f"{module}.{obj.__name__}", module=mod, globs=dict(globs)):
            if test.examples:
                runner.run(test)
                ran += len(test.examples)
    failed, _ = runner.summarize(verbose=False)
    assert ran > 0 and failed == 0, f"{failed} docstring example(s) failed in {module} (see the output above)"


def test_examples_need_only_the_top_level_import():
    """Examples write `gje_jax.remedies.smc.update(...)` after `import gje_jax`: every submodule they
    reach that way must be imported by gje_jax itself (checked in a fresh interpreter,
    since this test process has imported everything)."""
    import re
    import subprocess
    import sys

    used = set()
    for objs in OBJECTS.values():
        for o in objs:
            for line in (o.__doc__ or "").splitlines():
                line = line.strip()
                if line.startswith((">>>", "...")) and "import" not in line:
                    used |= set(re.findall(r"gje_jax\.([a-z_]+)\.", line))
    code = "import gje_jax\n" + "".join(f"gje_jax.{m}\n" for m in sorted(used))
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
