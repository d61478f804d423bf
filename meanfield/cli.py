"""Command line: ``meanfield run CASE.toml [--set KEY=VALUE ...] [--out DIR] [--quiet]``.

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
    r.add_argument("case", help="case file (TOML)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a case entry, e.g. --set model.beta=4 (repeatable)")
    r.add_argument("--out", help="output directory (default: runs/<case name>)")
    r.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    return p


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

    if isinstance(exc, CaseError) and exc.key in set_keys and exc.source == str(Path(case_path)):
        exc = CaseError("--set", exc.key, exc.reason)  # the value came from --set, not the file
    sys.stderr.write(f"meanfield: {kind}: {_one_line(exc)}\n")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .case import CaseError, load_case, parse_override
    from .run import RunFailure, run_case

    _setup_logging(args.quiet)
    set_keys: set = set()
    with warnings.catch_warnings():
        warnings.showwarning = _log_warning
        try:
            case = load_case(args.case, args.overrides)
            set_keys = {parse_override(item)[0] for item in args.overrides}
            out = Path(args.out) if args.out else Path("runs") / Path(args.case).stem
            progress = not args.quiet and sys.stderr.isatty()
            run_case(case, out_dir=out, progress=progress, source=str(Path(args.case)))
        except CaseError as exc:
            _error("error", exc, args.case, set_keys)
            return 2
        except RunFailure as exc:
            _error("run failed", exc, args.case, set_keys)
            return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
