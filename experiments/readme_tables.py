r"""Copies result tables written by the experiments into README.md and the documents in
docs/, so no number is typed by hand.

  python -m experiments.readme_tables            # rewrites them in place
  python -m experiments.readme_tables --check    # exit 1 if one is out of date

A document marks each table with `<!-- table: PATH -->` ... `<!-- end table -->`; the text
between the markers is replaced by the file at PATH (relative to the repository root).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The documents holding tables, relative to the repository root.
DOCUMENTS = ("README.md", "docs/results/ablations/index.md")
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
    stale = []
    for doc in DOCUMENTS:
        path = os.path.join(ROOT, doc)
        with open(path) as f:
            text = f.read()
        new = render(text)
        if new == text:
            continue
        stale.append(doc)
        if not args.check:
            with open(path, "w") as f:
                f.write(new)
    if args.check and stale:
        print(f"{', '.join(stale)}: tables differ from docs/results; run python -m experiments.readme_tables")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
