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


def _readme_commands():
    """The meanfield commands of the README's code blocks (after a `pip install ... &&`)."""
    import shlex

    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    out = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if "&&" in line:
                line = line.split("&&", 1)[1].strip()
            words = shlex.split(line)
            if words[:1] == ["mpiexec"] and "meanfield" in words:
                out.append(words)
            elif words[:1] == ["meanfield"]:
                out.append(words)
    return out


def test_the_readme_commands_run(tmp_path):
    """Every meanfield command in the README's code blocks runs (shortened: t_end = 0.5, no
    pictures, its own output directory), so the README cannot show a command that fails."""
    import os
    import shutil

    commands = _readme_commands()
    assert len(commands) >= 4, commands
    bin_dir = Path(sys.executable).parent
    for k, words in enumerate(commands):
        words = [shutil.which(w, path=str(bin_dir)) or w if w in ("meanfield", "mpiexec") else w for w in words]
        if "--out" in words:
            i = words.index("--out")
            words[i + 1] = str(tmp_path / f"run{k}")
        else:
            words += ["--out", str(tmp_path / f"run{k}")]
        words += ["--set", "solver.t_end=0.5", "--set", "output.every=0.25", "--set", "output.plots=false"]
        env = {key: v for key, v in os.environ.items() if not key.startswith(("PMI_", "OMPI_", "PMIX_"))}
        proc = subprocess.run(words, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, (words, proc.stderr[-2000:])
