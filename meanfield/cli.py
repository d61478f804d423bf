"""Command line::

    meanfield run CASE.toml [--set KEY=VALUE ...] [--out DIR] [--restart DIR] [--quiet]
    meanfield particles CASE.toml [--n N] [--seed S] [--set ...] [--out DIR] [--restart DIR]
    meanfield compare CASE.toml --particles N1,N2,... [--seeds S] [--metric NAME] [--set ...] [--out DIR]


Exit status: 0 success (the result passed every run-health check, :mod:`meanfield.pde.health`);
2 invalid input (one line on stderr naming the file, the key and the reason, no traceback),
including a run refused before it starts (too many steps predicted, too much memory, an
output directory holding another case's run without ``--overwrite``); 1 failure during the
run (one line with the reason, after saving the last good state); 130 interrupted (Ctrl-C:
one line naming the last snapshot kept and the ``--restart`` command that continues it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2
        sys.stderr.write(f"meanfield: error: {message}\n")
        raise SystemExit(2)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("meanfield")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown (not installed)"


_DOCS = "Documentation: README.md, docs/case-reference.md (every case key), docs/outputs.md (the files written)."


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="meanfield", description="Mean-field self-attention dynamics on the circle and the sphere: the "
                "continuity equation of tokens under attention (the PDE) and the same model's particles.",
                epilog="examples:\n  meanfield run cases/circle_sa_clusters.toml --out runs/clusters\n"
                       "  meanfield particles cases/authors_sphere.toml --n 256\n"
                       "  meanfield compare cases/circle_compare.toml --particles 256,1024 --seeds 2\n\n" + _DOCS,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"meanfield {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="{run,particles,compare}")
    fmt = argparse.RawDescriptionHelpFormatter
    r = sub.add_parser("run", help="evolve the density of a case with the finite-volume solver", formatter_class=fmt,
                       description="Evolve the case's density (circle, sphere, zonal bands, or the causal bands x "
                       "cells) to solver.t_end, writing snapshots, diagnostics.csv, clusters.csv and pictures.",
                       epilog="examples:\n  meanfield run cases/circle_sa_clusters.toml --out runs/clusters\n"
                              "  meanfield run cases/circle_usa_energy.toml --set model.beta=6 --out runs/usa6\n"
                              "  meanfield run cases/circle_sa_clusters.toml --restart runs/clusters "
                              "--set solver.t_end=40\n  mpiexec -n 2 meanfield run cases/sphere_usa.toml\n\n" + _DOCS)
    pa = sub.add_parser("particles", help="evolve n particles of the same model (sampled from the initial density)",
                        formatter_class=fmt,
                        description="Sample n tokens from the case's initial density (or take initial.points) and "
                        "move them with the same velocity field; particles.batch = B runs B prompts together.",
                        epilog="examples:\n  meanfield particles cases/authors_sphere.toml --n 256 --out runs/p\n"
                               "  meanfield particles cases/circle_causal_clusters.toml --n 2000\n\n"
                               "docs/particles.md (integrators, samplers, distances), docs/batch.md. " + _DOCS)
    pa.add_argument("--n", type=str, help="number of particles (case key particles.n)")
    pa.add_argument("--seed", type=str, help="seed of the sample (case key particles.seed)")
    co = sub.add_parser("compare", help="distance between the PDE and particle runs for several n and seeds",
                        formatter_class=fmt,
                        description="Run the PDE once and the particles for every n and seed; write compare.csv "
                        "(t, n, seed, metric, distance), a table of the mean distance with the fitted exponent of "
                        "distance ~ n^a, and compare.png.",
                        epilog="example:\n  meanfield compare cases/circle_compare.toml --particles 256,1024,4096 "
                               "--seeds 4 --metric w1 --out runs/cmp\n\ndocs/particles.md (the six distances). "
                               + _DOCS)
    co.add_argument("--particles", type=str, metavar="N1,N2,...", help="particle numbers (case key compare.particles)")
    co.add_argument("--seeds", type=str, metavar="S", help="number of seeds S (seeds 0..S-1) or a list a,b,c")
    co.add_argument("--metric", type=str, help="w1, w2, sinkhorn, sliced, mmd or tv (case key compare.metric)")
    for q in (r, pa, co):
        q.add_argument("case", help="case file (TOML)")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a case entry, e.g. --set model.beta=4 (repeatable)")
        q.add_argument("--out", help="output directory (default: runs/<case name>)")
        q.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
        q.add_argument("--max-memory", metavar="GIB", dest="max_memory",
                       help="refuse a case whose memory estimate exceeds GIB gibibytes (default: the memory available "
                            "on this machine; inf: no check)")
        q.add_argument("--overwrite", action="store_true",
                       help="replace the run of a different case in --out (or write into a non-empty directory that "
                            "holds no run); without it such a directory is refused (the same case is replaced)")
    for q, what in ((r, "density"), (pa, "particles")):
        q.add_argument("--restart", metavar="DIR",
                       help=f"continue the stopped run in DIR from its last complete snapshot (the {what} bitwise as "
                            "they were), writing into DIR, or into --out (DIR is then only read); the case must be "
                            "DIR's but for solver.t_end")
    return p


#: Command-line flags that set a case key: their values are validated as that key.
FLAG_KEYS = {"n": "particles.n", "seed": "particles.seed", "particles": "compare.particles",
             "seeds": "compare.seeds", "metric": "compare.metric"}


def _flag_overrides(args) -> list[str]:
    out = []
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if flag == "particles" or (flag == "seeds" and "," in value):
            value = "[" + value + "]"
        elif flag == "metric":
            value = '"' + value.replace('"', "") + '"'
        out.append(f"{key}={value}")
    return out


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of each record, not the stream of the
    first call (``main`` may be called again after stdout was redirected and closed)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ / setStream assign it
        pass


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("meanfield")
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _log_warning(message, category, filename, lineno, file=None, line=None):
    """Python warnings (e.g. numpy's from a user's initial function) go to the log on
    stdout, so that stderr holds only the one error line."""
    logging.getLogger("meanfield").warning("warning: %s:%s: %s: %s", filename, lineno, category.__name__,
                                           _one_line(str(message)))


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _error(kind: str, exc: Exception, case_path: str, set_keys: set) -> None:
    from .io.case import CaseError

    flags = {key: f"--{flag}" for flag, key in FLAG_KEYS.items()}
    if isinstance(exc, CaseError) and exc.key in set_keys and exc.source in (str(Path(case_path)), "--set"):
        # the value came from the command line, not the file
        exc = CaseError(flags.get(exc.key, "--set"), exc.key, exc.reason)
    sys.stderr.write(f"meanfield: {kind}: {_one_line(exc)}\n")


def _restart_command(args, out, dist=None) -> str:
    """The command that continues an interrupted run (the resolved case.toml in its directory
    repeats every --set and flag)."""
    import shlex

    out = Path(out)
    prefix = f"mpiexec -n {dist.size} " if dist is not None and dist.size > 1 else ""
    return f"{prefix}meanfield {args.command} {shlex.quote(str(out / 'case.toml'))} --restart {shlex.quote(str(out))}"


def _launched() -> bool:
    from .parallel import launched_under_mpi

    return launched_under_mpi()


def _mpi_excepthook(dist):
    """``sys.excepthook`` under MPI: an exception that escapes on any rank ends the whole
    job (mpi4py's own pattern: print, then ``Abort``), instead of leaving the other ranks
    waiting in a collective."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        dist.abort(f"meanfield: uncaught {kind.__name__} on rank {dist.rank}: {_one_line(value)}", 1)

    return hook


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    if not argv:  # a bare `meanfield`: what it does and how to call it
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    from .io.case import CaseError, load_case, parse_override
    from .run import RunFailure, RunInterrupted, agreed, run_case

    dist = None
    if _launched():
        from .parallel import Distributor

        dist = Distributor()
        sys.excepthook = _mpi_excepthook(dist)
    _setup_logging(args.quiet or (dist is not None and not dist.root))
    flag_items = _flag_overrides(args)
    set_keys: set = {key for key in FLAG_KEYS.values() if any(item.startswith(key + "=") for item in flag_items)}
    out = None
    # Overflow is never printed as a NumPy warning: what it produces (an infinite rate, a
    # non-finite field) is caught by the checks before and during the run, which say what
    # overflowed and what to change; inside the time loop meanfield.pde.health records it.
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.showwarning = _log_warning
        try:
            # a user's module imported by the case may fail on one rank only: agree first
            case = agreed(dist, load_case, args.case, list(args.overrides) + flag_items)
            set_keys |= {parse_override(item)[0] for item in args.overrides}
            restart = getattr(args, "restart", None)
            if restart is not None:
                from .run import restart_paths

                out = restart_paths(args.out, restart)[1]  # DIR, or the other directory --out names
            else:
                out = Path(args.out) if args.out else Path("runs") / Path(args.case).stem
            # a bar on a terminal; in a job log (stderr not a terminal) a progress line every 30 s
            progress = False if args.quiet else ("bar" if sys.stderr.isatty() else "log")
            source = str(Path(args.case))
            max_memory = None
            if args.max_memory is not None:
                from .budget import parse_memory_limit

                max_memory = parse_memory_limit(args.max_memory)
            common = dict(out_dir=out, progress=progress, source=source, dist=dist, overwrite=args.overwrite,
                          max_memory=max_memory)
            if args.command == "run":
                run_case(case, restart=restart, **common)
            elif args.command == "particles":
                from .particles.run import run_particles

                run_particles(case, restart=restart, **common)
            else:
                from .particles.run import run_compare

                run_compare(case, **common)
        except CaseError as exc:  # agreed on every rank: rank 0 says it once
            if dist is None or dist.root:
                _error("error", exc, args.case, set_keys)
            return 2
        except RunInterrupted as exc:
            if dist is None or dist.root:
                line = f"meanfield: {exc}"
                if exc.kept is not None and exc.out_dir is not None:
                    line += f"; continue with: {_restart_command(args, exc.out_dir, dist)}"
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            if dist is not None and dist.size > 1:
                if not dist.root:
                    time.sleep(0.5)  # let rank 0 say it
                dist.abort("", 130)
            return 130
        except KeyboardInterrupt:  # before the time loop: nothing was run
            if dist is None or dist.root:
                sys.stderr.write("meanfield: interrupted before the run started; nothing to continue\n")
            if dist is not None and dist.size > 1:
                if not dist.root:
                    time.sleep(0.5)
                dist.abort("", 130)
            return 130
        except RunFailure as exc:
            # A failure found from replicated state (non-finite or unhealthy state, a stalled
            # run, an error agreed on) is found by every rank alike: rank 0 reports it and
            # every rank returns. Any other failure may be this rank's alone while the others
            # wait in a collective: end the whole job now.
            if dist is None or dist.size == 1 or exc.replicated:
                if dist is None or dist.root:
                    _error("run failed", exc, args.case, set_keys)
                return 1
            dist.abort(f"meanfield: run failed on rank {dist.rank}: {_one_line(exc)}", 1)
        except Exception as exc:
            if dist is not None and dist.size > 1:
                dist.abort(f"meanfield: run failed on rank {dist.rank}: {type(exc).__name__}: {_one_line(exc)}", 1)
            raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
