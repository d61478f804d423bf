"""The docs cannot go stale silently: the case reference is the schema's, and the commands the
README shows exist (their case files resolve)."""

import re
import subprocess
import sys
from pathlib import Path

from meanfield.io.case import load_case

REPO = Path(__file__).resolve().parents[1]


def test_case_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, str(REPO / "docs" / "make_case_reference.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_case_file_named_in_the_readme_and_docs_resolves():
    texts = [(REPO / "README.md").read_text()] + [p.read_text() for p in (REPO / "docs").glob("*.md")]
    # (an error message's example file, "cases/my.toml", is no case of the repository)
    named = {m for text in texts for m in re.findall(r"cases/[A-Za-z0-9_]+\.(?:toml|py)", text)} - {"cases/my.toml"}
    assert len(named) >= 20
    for name in sorted(named):
        path = REPO / name
        assert path.is_file(), f"{name} is named in the docs but does not exist"
        if path.suffix == ".toml":
            load_case(path)
