"""Command line::

    meanfield run CASE.toml [--set KEY=VALUE ...] [--out DIR] [--restart DIR] [--quiet]
    meanfield particles CASE.toml [--n N] [--seed S] [--set ...] [--out DIR] [--restart DIR]
    meanfield compare CASE.toml --particles N1,N2,... [--seeds S] [--metric NAME] [--set ...] [--out DIR]


Exit status: 0 success; 2 invalid input (one line on stderr naming the file, the key and
the reason, no traceback); 1 failure during the run (after saving the last good state).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2
        sys.stderr.write(f"meanfield: error: {message}\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="meanfield", description="Mean-field self-attention dynamics on the circle and the sphere.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="evolve the density of a case with the finite-volume solver")
    pa = sub.add_parser("particles", help="evolve n particles of the same model (sampled from the initial density)")
    pa.add_argument("--n", type=str, help="number of particles (case key particles.n)")
    pa.add_argument("--seed", type=str, help="seed of the sample (case key particles.seed)")
    co = sub.add_parser("compare", help="distance between the PDE and particle runs for several n and seeds")
    co.add_argument("--particles", type=str, metavar="N1,N2,...", help="particle numbers (case key compare.particles)")
    co.add_argument("--seeds", type=str, metavar="S", help="number of seeds S (seeds 0..S-1) or a list a,b,c")
    co.add_argument("--metric", type=str, help="w1, w2, sinkhorn, sliced, mmd or tv (case key compare.metric)")
    for q in (r, pa, co):
        q.add_argument("case", help="case file (TOML)")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a case entry, e.g. --set model.beta=4 (repeatable)")
        q.add_argument("--out", help="output directory (default: runs/<case name>)")
        q.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    for q in (r, pa):
        q.add_argument("--restart", metavar="DIR",
                       help="continue the stopped run in DIR from its last complete snapshot, writing into DIR "
                            "(run: or into --out, DIR then only read; the case must be DIR's but for solver.t_end)")
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
    from .case import CaseError

    flags = {key: f"--{flag}" for flag, key in FLAG_KEYS.items()}
    if isinstance(exc, CaseError) and exc.key in set_keys and exc.source in (str(Path(case_path)), "--set"):
        # the value came from the command line, not the file
        exc = CaseError(flags.get(exc.key, "--set"), exc.key, exc.reason)
    sys.stderr.write(f"meanfield: {kind}: {_one_line(exc)}\n")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .case import CaseError, load_case, parse_override
    from .run import RunFailure, run_case
    from .timestepping import NonFiniteStateError

    dist = None
    from .parallel import launched_under_mpi

    if launched_under_mpi():
        from .parallel import Distributor

        dist = Distributor()
    _setup_logging(args.quiet or (dist is not None and not dist.root))
    flag_items = _flag_overrides(args)
    set_keys: set = {key for key in FLAG_KEYS.values() if any(item.startswith(key + "=") for item in flag_items)}
    with warnings.catch_warnings():
        warnings.showwarning = _log_warning
        try:
            case = load_case(args.case, list(args.overrides) + flag_items)
            set_keys |= {parse_override(item)[0] for item in args.overrides}
            restart = getattr(args, "restart", None)
            if restart is not None:
                from .run import restart_paths

                out = restart_paths(args.out, restart)[1]  # DIR, or the other directory --out names
            else:
                out = Path(args.out) if args.out else Path("runs") / Path(args.case).stem
            progress = not args.quiet and sys.stderr.isatty()
            source = str(Path(args.case))
            if args.command == "run":
                run_case(case, out_dir=out, progress=progress, source=source, dist=dist, restart=restart)
            elif args.command == "particles":
                from .particle_run import run_particles

                run_particles(case, out_dir=out, progress=progress, source=source, dist=dist,
                              restart=restart)
            else:
                from .particle_run import run_compare

                run_compare(case, out_dir=out, progress=progress, source=source, dist=dist)
        except CaseError as exc:  # detected identically on every rank: rank 0 says it once
            if dist is None or dist.root:
                _error("error", exc, args.case, set_keys)
            return 2
        except RunFailure as exc:
            # A non-finite state is found by every rank alike (they hold the same state):
            # rank 0 reports it and every rank returns. Any other failure may be this rank's
            # alone while the others wait in a collective: end the whole job now.
            if dist is None or dist.size == 1 or isinstance(exc.__cause__, NonFiniteStateError):
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
