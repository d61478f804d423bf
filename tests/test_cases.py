"""Every case file in cases/ resolves (keys, values, its initial function's signature, its mesh)
and gets a cost estimate: a case a user copies must not fail on input (a header edit once
glued a comment onto ``[domain]``)."""

from pathlib import Path

import pytest

from meanfield import budget
from meanfield.io.case import load_case

CASES = sorted((Path(__file__).resolve().parents[1] / "cases").glob("*.toml"))


def test_there_are_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case_resolves(path):
    case = load_case(path)
    est = budget.estimate(case, "run", source=str(path))
    assert est is not None
