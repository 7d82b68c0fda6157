"""The README's result tables are the files the experiments wrote (no hand-typed numbers)."""

import os

import pytest

from experiments import readme_tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("doc", readme_tables.DOCUMENTS)
def test_readme_tables_match_result_files(doc):
    with open(os.path.join(ROOT, doc)) as f:
        text = f.read()
    assert "<!-- table: " in text
    assert readme_tables.render(text) == text, "run: python -m experiments.readme_tables"


def test_every_public_name_is_documented_and_api_md_is_current():
    from experiments import api_docs

    assert api_docs.undocumented() == []
    with open(os.path.join(ROOT, "API.md")) as f:
        assert f.read() == api_docs.render(), "run: python -m experiments.api_docs"
