"""Run health: what every step and every snapshot must satisfy for the run to count as a
valid solution, and the progress guarantees that stop a run which cannot finish.

A violation raises :class:`~meanfield.pde.timestepping.RunHealthError` (a state that is not a
solution any more) or :class:`~meanfield.pde.timestepping.StalledRunError` (a run that would not
finish); :func:`meanfield.run.drive` turns either into exit status 1 with a one-line reason
and the last good state saved. The bounds (``docs/outputs.md``, "Run health"):

* **mass**: ``|mass - mass_0| <= MASS_TOLERANCE * mass_0`` after every step (the schemes
  conserve it to round-off: ~1e-18 per finite-volume step);
* **positivity**: ``min rho >= -NEGATIVE_TOLERANCE * max rho`` after every step (the
  finite-volume schemes keep it exactly; the pseudo-spectral scheme is not positivity
  preserving, and a negative density there means the grid no longer resolves the solution);
* **finite** densities / positions after every step, and finite energy and speeds at every
  snapshot;
* **progress**: the steps done plus the steps still needed at the current step size
  (``(t_end - t) / dt``, with dt the largest of the last :data:`WINDOW` steps, so one step
  shortened to land on an output time does not count) may not exceed ``solver.max_steps``,
  and a step that does not move ``t`` in floating point ends the run.

Floating-point overflow and invalid operations inside the time loop are not printed as
NumPy warnings: :class:`FloatingPointWatch` records the first one, and the next health check
ends the run with it (``what``, where in the code, and when).
"""

from __future__ import annotations

import collections
import math
import traceback

import numpy as np

from .timestepping import RunHealthError, StalledRunError

__all__ = ["MASS_TOLERANCE", "NEGATIVE_TOLERANCE", "WINDOW", "FloatingPointWatch", "StepBudget", "check_density",
           "check_row"]

#: Relative bound on the drift of the total mass.
MASS_TOLERANCE = 1e-10
#: Negative densities down to this fraction of the largest density count as round-off.
NEGATIVE_TOLERANCE = 1e-12
#: Steps over which the current step size is taken (the largest of them).
WINDOW = 16


def check_density(t: float, rho: np.ndarray, areas: np.ndarray, mass0: float, what: str = "density") -> None:
    """Raise :class:`RunHealthError` when the cell density ``rho`` at time ``t`` is not
    finite, is negative beyond round-off, or has lost or gained mass."""
    if rho.size == 0:
        return
    low, top = float(rho.min()), float(rho.max())  # two passes; a NaN or inf shows in them
    if not (math.isfinite(low) and math.isfinite(top)):
        bad = int(np.flatnonzero(~np.isfinite(rho))[0])
        raise RunHealthError(f"t={t:.6g}: the {what} became non-finite (cell {bad}: {rho[bad]})")
    if low < -NEGATIVE_TOLERANCE * max(top, 0.0):
        low_i = int(np.argmin(rho))
        raise RunHealthError(f"t={t:.6g}: negative {what} {low:.3e} in cell {low_i} (largest {top:.3e}; allowed "
                             f"down to -{NEGATIVE_TOLERANCE:g} x largest): the scheme no longer resolves the solution; "
                             "use more cells or a positivity-preserving scheme (solver.scheme = \"muscl\")")
    mass = float(rho @ areas)
    if not abs(mass - mass0) <= MASS_TOLERANCE * abs(mass0):
        raise RunHealthError(f"t={t:.6g}: the mass is {mass:.16g}, it was {mass0:.16g} (relative change "
                             f"{abs(mass - mass0) / abs(mass0):.3e}, allowed {MASS_TOLERANCE:g})")


def check_row(row: dict) -> None:
    """Raise :class:`RunHealthError` when a diagnostics row holds a non-finite energy,
    speed, mass or density."""
    for key in ("mass", "min_density", "max_density", "energy", "order_parameter", "max_speed"):
        value = row.get(key)
        if value is not None and not math.isfinite(value):
            hint = ""
            if key in ("energy", "max_speed"):
                hint = ("; at large beta use model.shift = true (USA: the shifted kernel, a rescaling of time; SA: "
                        "only the energy column becomes exp(-beta c) E), a smaller beta, or model.kind = \"SA\"")
            raise RunHealthError(f"t={row['t']:.6g}: {key} is {value}{hint}")


class StepBudget:
    """The progress guarantee: steps done + steps predicted from the current step size
    may not exceed ``max_steps``; a step that does not move ``t`` ends the run too."""

    def __init__(self, t_end: float, max_steps: int, hint: str = "", predict: bool = True):
        self.t_end = float(t_end)
        self.max_steps = int(max_steps)
        self.hint = hint
        #: False for an error-controlled stepper whose steps shrink in a merger and grow by
        #: orders of magnitude after it: then only the steps done count (and a step that no
        #: longer moves t)
        self.predict = bool(predict)
        self.recent: collections.deque = collections.deque(maxlen=WINDOW)

    def predicted(self, steps: int, t: float, dt: float) -> float:
        """Steps done plus ``(t_end - t) / dt``."""
        if not dt > 0:
            return math.inf
        return steps + max(self.t_end - t, 0.0) / dt

    def update(self, state, dt: float, landed: bool = False) -> None:
        """After every step: raise :class:`StalledRunError` when the run cannot finish.
        ``landed``: the step was shortened to land on an output time, so it says nothing of
        the step size to come (geometric snapshots 8% apart at t = 0.03 allow 2e-3) and is
        left out of the prediction."""
        t, steps = state.t, state.steps
        if not (dt > 0 and math.isfinite(dt)) or (t < self.t_end and t + dt == t):
            raise StalledRunError(f"t={t:.6g}: the step fell to {dt:.3e}, which no longer moves t in double "
                                  f"precision{self._hint()}")
        if not landed:
            self.recent.append(dt)
        if steps > self.max_steps:
            raise StalledRunError(f"t={t:.6g}: {steps} steps done, more than solver.max_steps = {self.max_steps}"
                                  f"{self._hint()}")
        if self.predict and len(self.recent) == self.recent.maxlen:
            need = self.predicted(steps, t, max(self.recent))
            if need > self.max_steps:
                raise StalledRunError(f"t={t:.6g}: the step fell to {max(self.recent):.3e}; reaching t_end = "
                                      f"{self.t_end:g} would take about {need:.3g} steps, more than solver.max_steps = "
                                      f"{self.max_steps}{self._hint()}")

    def _hint(self) -> str:
        return f"; {self.hint}" if self.hint else ""


class FloatingPointWatch:
    """Context manager: NumPy floating-point overflow and invalid operations are recorded
    (the first one, with the line of code where it happened) instead of printed as
    warnings; :meth:`check` raises it as a :class:`RunHealthError`."""

    def __init__(self):
        self.event: str | None = None
        self._errstate = None

    def _record(self, kind: str, flag: int) -> None:
        if self.event is None:
            frames = [f for f in traceback.extract_stack()[:-1] if "numpy" not in f.filename]
            where = f" ({_short(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
            self.event = f"floating-point {kind} in the computation{where}"

    def __enter__(self):
        self._errstate = np.errstate(over="call", invalid="call", divide="ignore", under="ignore", call=self._record)
        self._errstate.__enter__()
        return self

    def __exit__(self, *exc):
        self._errstate.__exit__(*exc)
        return False

    def check(self, t: float) -> None:
        if self.event is not None:
            event, self.event = self.event, None
            # one rank's share of a computation may overflow while another's does not
            raise RunHealthError(f"t={t:.6g}: {event}", replicated=False)


def _short(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:]) if "meanfield" in parts else parts[-1]
