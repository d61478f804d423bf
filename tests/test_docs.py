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


def test_every_case_is_in_the_readme_table():
    text = (REPO / "README.md").read_text()
    missing = [p.name for p in sorted((REPO / "cases").iterdir())
               if p.suffix in (".toml", ".py") and f"| `cases/{p.name}` |" not in text]
    assert not missing, f"cases/ files not in the README's case table: {missing}"


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


def _docs_commands():
    """The commands the docs show with a real case file or script: ``meanfield run|particles|
    compare cases/...`` and ``python cases|benchmarks|docs/....py ...``, from code blocks and
    inline code (a placeholder such as CASE, DIR or N is no command; a ``--restart`` needs a
    run the reader made first)."""
    import shlex

    found = []
    for path in sorted((REPO / "docs").glob("*.md")):
        text = path.read_text()
        lines = [line for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S) for line in block.splitlines()]
        lines += re.findall(r"`([^`\n]+)`", text)
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line.startswith(("meanfield ", "mpiexec ", "python ")):
                continue
            words = shlex.split(line)
            if words[:1] == ["mpiexec"]:
                words = words[3:] if len(words) > 3 and words[1] == "-n" else []
            if words[:1] == ["meanfield"] and len(words) > 2 and words[1] in ("run", "particles", "compare") \
                    and re.fullmatch(r"cases/[A-Za-z0-9_]+\.toml", words[2]) and "--restart" not in words:
                found.append((path.name, tuple(words)))
            elif words[:1] == ["python"] and len(words) > 1 and re.fullmatch(r"(cases|benchmarks|docs)/\w+\.py", words[1]):
                found.append((path.name, tuple(words)))
    return sorted(set(found))


def test_the_docs_meanfield_commands_run(tmp_path):
    """Every ``meanfield`` command with a case file in docs/*.md runs, shortened as the
    README's (t_end = 0.5, no pictures, its own output directory); an ``mpiexec`` in front
    is dropped (the MPI tests run the parallel paths)."""
    import os
    import shutil

    commands = [words for _, words in _docs_commands() if words[0] == "meanfield"]
    assert len(commands) >= 8, commands
    exe = shutil.which("meanfield", path=str(Path(sys.executable).parent)) or "meanfield"
    env = {key: v for key, v in os.environ.items() if not key.startswith(("PMI_", "OMPI_", "PMIX_"))}
    for k, words in enumerate(commands):
        words = [exe, *words[1:]]
        if "--out" in words:
            words[words.index("--out") + 1] = str(tmp_path / f"run{k}")
        else:
            words += ["--out", str(tmp_path / f"run{k}")]
        if "--n" in words:  # a particle count of the docs' scale: the run is checked, not the speed
            words[words.index("--n") + 1] = "200"
        case = load_case(REPO / words[2])
        # a schedule's switch times lie inside the case's t_end: keep it (the gallery's such case: 7 s)
        t_end = case["solver"]["t_end"] if case["model"].get("schedule") else 0.5
        words += ["--set", f"solver.t_end={t_end}", "--set", f"output.every={t_end / 2}",
                  "--set", "output.plots=false"]
        proc = subprocess.run(words, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, (words, proc.stderr[-2000:])


def test_the_docs_python_commands_parse():
    """Every ``python cases|benchmarks|docs/X.py ARGS`` in docs/*.md exists and accepts ARGS:
    run with ``--help`` appended (the options are type-checked as they are read; the help text
    must name every option the docs pass)."""
    commands = [words for _, words in _docs_commands() if words[0] == "python"]
    assert len(commands) >= 15, commands
    for words in commands:
        proc = subprocess.run([sys.executable, *words[1:], "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, (words, proc.stderr[-2000:])
        for option in (w.split("=", 1)[0] for w in words[2:] if w.startswith("--")):
            assert option in proc.stdout, (words, option)
