"""Strong-stability-preserving Runge--Kutta time stepping with adaptive steps.

Contract of an integrator (:class:`SSPRK`):

* ``step(operator, u0, dt, stage0)`` advances ``u0`` by ``dt`` and returns the new state.
  ``operator(u) -> (L(u), aux, dt_pos)`` gives the time derivative and the largest
  forward-Euler step that keeps the state admissible (nonnegative); ``stage0`` is
  ``operator(u0)``, which the caller has already computed to choose ``dt``.
* If some stage needs a smaller step than ``dt`` to stay admissible the integrator
  raises :class:`StepRejected` with the largest admissible ``dt`` it saw; the caller retries.

Schemes are tables in Shu--Osher form, ``u_k = a_k u_0 + (1 - a_k)(u_{k-1} + c dt L(u_{k-1}))``,
a convex combination of forward-Euler steps of size ``c dt``: every property a forward-Euler
step keeps under a step ``h`` (positivity here) the whole scheme keeps for ``dt <= h / c``
(``1 / c`` is the SSP coefficient). SSP-RK3 (Shu--Osher) has ``c = 1``; the four-stage
third-order SSP(4,3) has ``c = 1/2``: steps twice as long for 4/3 of the work per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SSPRK", "SSPRK3", "SSPRK43", "INTEGRATORS", "NonFiniteStateError", "RunHealthError", "StalledRunError",
           "StepRejected", "Stepper"]


class NonFiniteStateError(FloatingPointError):
    """A stage of a step produced a non-finite state."""


class RunHealthError(FloatingPointError):
    """The state violates an invariant of the solution (mass, positivity, finite energy or
    speeds) beyond its stated bound: the run is not a valid solution any more. Every rank
    holds the same state, so every rank finds it alike (``replicated``), unless the check
    concerns one rank's own share of a computation (``replicated=False``)."""

    def __init__(self, message: str, replicated: bool = True):
        super().__init__(message)
        self.replicated = replicated


class StalledRunError(RuntimeError):
    """The run cannot reach ``t_end`` in a reasonable number of steps (the step fell below
    its floor or underflowed, or the predicted step count exceeds ``solver.max_steps``)."""


class StepRejected(Exception):
    """A stage would leave the admissible set; ``dt_allowed`` is what it could take."""

    def __init__(self, dt_allowed: float):
        super().__init__(f"step rejected, admissible dt = {dt_allowed:.3e}")
        self.dt_allowed = dt_allowed


@dataclass(frozen=True)
class SSPRK:
    """An explicit SSP Runge--Kutta scheme in Shu--Osher form (coefficients ``a``)."""

    name: str
    order: int
    a: tuple[float, ...]
    #: Each stage is a forward-Euler step of ``c * dt``.
    c: float = 1.0

    @property
    def ssp_coefficient(self) -> float:
        """The step is admissible up to ``ssp_coefficient`` times the forward-Euler bound."""
        return 1.0 / self.c

    def step(self, operator, u0: np.ndarray, dt: float, stage0=None) -> np.ndarray:
        lu, _, dt_pos = stage0 if stage0 is not None else operator(u0)
        u = u0
        h = self.c * dt
        for k, a in enumerate(self.a):
            if k > 0:
                lu, _, dt_pos = operator(u)
            if h > dt_pos:
                raise StepRejected(dt_pos / self.c)
            # u0 + (1 - a)(u - u0 + h L): rounding errors scale with the increment, not
            # with the state, so the mass drifts by far less than one ulp per step.
            u = u + h * lu if a == 0.0 else u0 + (1.0 - a) * ((u - u0) + h * lu)
            if not np.all(np.isfinite(u)):
                raise NonFiniteStateError(f"stage {k + 1} of a {self.name} step of size {dt:.3e} is not finite")
        return u


#: Forward Euler (first order), Heun's SSP-RK2 and Shu--Osher's SSP-RK3.
SSPRK1 = SSPRK("euler", 1, (0.0,))
SSPRK2 = SSPRK("ssprk2", 2, (0.0, 0.5))
SSPRK3 = SSPRK("ssprk3", 3, (0.0, 0.75, 1.0 / 3.0))
#: SSP(4,3) (Kraaijevanger; Spiteri--Ruuth): four Euler stages of dt/2, the third averaged
#: with u0 (2/3 u0 + 1/3 ...). Third order, SSP coefficient 2.
SSPRK43 = SSPRK("ssprk43", 3, (0.0, 0.0, 2.0 / 3.0, 0.0), c=0.5)

INTEGRATORS = {s.name: s for s in (SSPRK1, SSPRK2, SSPRK3, SSPRK43)}


class Stepper:
    """Base of the solvers (finite volumes, particles, pseudo-spectral): a subclass
    implements ``step(state, t_limit) -> dt``, one step that lands exactly on ``t_limit``
    when it would reach it, and inherits :meth:`advance`."""

    #: A remainder up to ``t_limit`` of at most this fraction of a step is absorbed into
    #: the step, so that ``t_end = k dt`` takes k steps despite rounding in ``t``.
    LANDING_SLACK = 1e-9

    def step(self, state, t_limit: float) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def clip_step(self, t: float, dt: float, t_limit: float) -> float:
        """``dt``, or exactly the time left to ``t_limit`` when ``dt`` would reach it."""
        remaining = t_limit - t
        return remaining if dt >= remaining * (1.0 - self.LANDING_SLACK) else dt

    @staticmethod
    def finish_step(state, dt: float, t_limit: float) -> None:
        """Move ``state.t`` by ``dt``, landing bitwise on ``t_limit`` when the step was clipped to it."""
        state.t = t_limit if dt == t_limit - state.t else state.t + dt
        state.steps += 1

    def advance(self, state, t_target: float, callback=None):
        """Step ``state`` until ``state.t == t_target`` exactly; ``callback(state, dt)`` after each step."""
        while state.t < t_target:
            dt = self.step(state, t_target)
            if callback is not None:
                callback(state, dt)
        return state
