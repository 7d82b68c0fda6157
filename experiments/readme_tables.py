r"""Copies result tables written by the experiments into README.md, so no number is typed by hand.

  python -m experiments.readme_tables            # rewrites README.md in place
  python -m experiments.readme_tables --check    # exit 1 if README.md is out of date

README.md marks each table with `<!-- table: PATH -->` ... `<!-- end table -->`; the text
between the markers is replaced by the file at PATH (relative to the repository root).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BLOCK = re.compile(r"(<!-- table: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def render(text: str, root: str = ROOT) -> str:
    def fill(m):
        with open(os.path.join(root, m.group("path"))) as f:
            return m.group(1) + f.read().rstrip("\n") + "\n" + m.group(4)

    return _BLOCK.sub(fill, text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        text = f.read()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md tables differ from docs/results; run python -m experiments.readme_tables")
            return 1
        return 0
    with open(path, "w") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
