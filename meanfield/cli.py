"""Command line: ``meanfield run CASE.toml [--set KEY=VALUE ...] [--out DIR] [--quiet]``.

Exit status: 0 success; 2 invalid input (one line on stderr naming the file, the key and
the reason, no traceback); 1 failure during the run (after saving the last good state).
"""

from __future__ import annotations

import argparse
import logging
import sys
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
    r.add_argument("case", help="case file (TOML)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a case entry, e.g. --set model.beta=4 (repeatable)")
    r.add_argument("--out", help="output directory (default: runs/<case name>)")
    r.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    return p


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("meanfield")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .case import CaseError, load_case
    from .run import RunFailure, run_case

    _setup_logging(args.quiet)
    try:
        case = load_case(args.case, args.overrides)
        out = Path(args.out) if args.out else Path("runs") / Path(args.case).stem
        progress = not args.quiet and sys.stderr.isatty()
        run_case(case, out_dir=out, progress=progress, source=args.case)
    except CaseError as exc:
        sys.stderr.write(f"meanfield: error: {exc}\n")
        return 2
    except RunFailure as exc:
        sys.stderr.write(f"meanfield: run failed: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
