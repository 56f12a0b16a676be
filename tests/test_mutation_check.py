"""tools/mutation_check.py stays usable as the code changes: every planted bug still applies to the
text it edits, every test it runs exists, and every bug is listed in tests/KNOWN_BUGS_CAUGHT.md.
(Running the mutations takes minutes: `PYTHONPATH=. python tools/mutation_check.py`.)"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "tools" / "mutation_check.py")
mutation_check = sys.modules["mutation_check"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(mutation_check)
MUTATIONS = {m.name: m for m in mutation_check.MUTATIONS}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mutation_applies_to_the_current_code(tmp_path, name):
    mutation = MUTATIONS[name]
    (tmp_path / mutation.path).parent.mkdir(parents=True)
    shutil.copy(ROOT / mutation.path, tmp_path / mutation.path)
    assert mutation_check.apply(mutation, tmp_path) is None
    assert (tmp_path / mutation.path).read_text() != (ROOT / mutation.path).read_text()


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mutation_names_existing_tests_and_is_listed(name):
    for node in MUTATIONS[name].tests:
        path, _, test = node.partition("::")
        assert f"def {test}(" in (ROOT / path).read_text(), f"{node} does not exist"
    assert f"| `{name}` |" in (ROOT / "tests" / "KNOWN_BUGS_CAUGHT.md").read_text()
