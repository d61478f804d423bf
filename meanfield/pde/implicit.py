"""A linearly implicit, error-controlled time integration for long runs: steps set by accuracy.

Why
---
Once clusters have collapsed, the explicit step of :class:`~meanfield.pde.solver.Simulation`
stays pinned by the CFL bound ``|C_i| / sum w |X.n|`` of the nearly empty cells around them
(the velocity there is large, the mass tiny), although nothing visible changes. This module
keeps the finite-volume space discretization and replaces the time stepping by an implicit
one whose step is chosen by an error estimate alone.

The scheme
----------
Write the first-order upwind finite-volume operator in the cell masses ``m_i = rho_i |C_i|``.
For edge ``e`` between ``L`` (left) and ``R`` (right) with edge normal velocities ``u_q`` at its
quadrature points and weights ``w_q``, let

.. math::

    a_e^+ = \\sum_q w_q \\max(u_q, 0), \\qquad a_e^- = \\sum_q w_q \\max(-u_q, 0),

so that the upwind flux from ``L`` to ``R`` is ``F_e = a_e^+ rho_L - a_e^- rho_R``. Then
``dm/dt = -B(u) m`` with, for every edge,

.. math::

    B_{LL} \\mathrel{+}= a_e^+/|C_L|,\\; B_{RL} \\mathrel{-}= a_e^+/|C_L|,\\;
    B_{RR} \\mathrel{+}= a_e^-/|C_R|,\\; B_{LR} \\mathrel{-}= a_e^-/|C_R|.

Properties of ``B``: nonnegative diagonal, nonpositive off-diagonal entries, **column sums
zero** (what leaves one cell enters its neighbour). Hence ``1^T (I + h B) = 1^T`` (mass) and
``I + h B`` is strictly column diagonally dominant with the M-matrix sign pattern for every
``h >= 0``: its inverse is entrywise nonnegative (**positivity for any step**).

One *linearly implicit Euler* step of size ``h`` from ``m`` freezes the velocity at the start:

.. math::

    \\Phi_h(m) = (I + h B(u[m]))^{-1} m, \\qquad u[m] = X[m] \\cdot n \\text{ at the edges},

one field evaluation and one sparse LU solve (:func:`scipy.sparse.linalg.splu`; on the circle
``B`` is cyclic tridiagonal, on a triangulated sphere it has three neighbours per column). It
is first order in time: its local error is ``K h^2 + O(h^3)``.

MUSCL with frozen face ratios (``scheme = "muscl"``). The second-order fluxes take the
limited reconstruction's face values ``rho_{L,q}`` (:mod:`meanfield.pde.finite_volume`:
Barth--Jespersen, so ``0 <= rho_{L,q} <= 2 rho_L``) instead of the cell average. Writing them
as ``g_{L,q} rho_L`` with the ratio ``g_{L,q} = rho_{L,q} / rho_L`` in ``[0, 2]`` (1 in an empty
cell) and freezing ``g`` at the start of each implicit Euler step, as the velocity is
frozen, gives the same matrix with

.. math::

    a_e^+ = \\sum_q w_q \\max(u_q, 0)\\, g_{L,q}, \\qquad a_e^- = \\sum_q w_q \\max(-u_q, 0)\\, g_{R,q}:

nonnegative, so ``B`` keeps its sign pattern and zero column sums (mass and positivity for
any step), and at the state the ratios come from ``-B m`` is exactly the explicit MUSCL
operator. The step is still first order in time (the ratios lag like the velocity); the
extrapolation below restores the second order. What it buys: the upwind flux moves a
resolved cluster of width sigma at ``1 - h / (sqrt(2 pi) sigma)`` of its velocity, MUSCL at
``1 - O((h / sigma)^3)`` (tests/test_implicit_merging.py), so metastable merger times
converge on meshes where upwind's do not (docs/long_times.md).

Error estimate and second order (Richardson extrapolation). Each step of size ``dt`` computes
the coarse ``y_1 = Phi_dt(m)`` and the fine ``y_2 = Phi_{dt/2}(Phi_{dt/2}(m))`` (the second half
step with the velocity re-evaluated at the midpoint state). With ``y_1 = y + K dt^2`` and
``y_2 = y + K dt^2 / 2`` (``y`` the exact flow),

* ``|y_2 - y_1| = K dt^2 / 2 + O(dt^3)`` estimates the local error of ``y_2``;
* ``y_R = 2 y_2 - y_1 = y_2 + (y_2 - y_1)`` is second order (``O(dt^3)`` locally).

``y_R`` need not be nonnegative (no unconditionally positive linear scheme is better than
first order, Bolley--Crouzeix), so the step propagates the **limited extrapolation**

.. math::

    y = y_2 + \\theta (y_2 - y_1), \\qquad
    \\theta = \\min\\Big(1, \\min_{i:\\, y_{2,i} < y_{1,i}} \\frac{y_{2,i}}{y_{1,i} - y_{2,i}}\\Big) \\in [0, 1],

the largest global ``theta`` keeping every mass nonnegative. ``y_1`` and ``y_2`` carry the same
total mass, so every ``theta`` keeps the mass (to round-off); ``theta = 1`` (smooth, positive
data) is second order, ``theta = 0`` is the positive fine solution ``y_2`` whose error is the
one estimated. The controller thus bounds the error of the worst case and gains from the
extrapolation where it is admissible (local extrapolation, as in Dormand--Prince).

Step control. With densities ``r_0`` (start), ``r_1, r_2`` (coarse, fine):

.. math::

    \\mathrm{err} = \\max_i \\frac{|r_{2,i} - r_{1,i}|}{\\mathrm{atol} + \\mathrm{rtol} \\max(r_{0,i}, r_{2,i})},

accepted when ``err <= 1``; the next (or retried) step is
``dt * min(max_growth, max(0.2, safety err^{-1/2}))`` (the estimate is ``O(dt^2)``). No CFL bound
enters. The steps also land on output and switch times and respect ``dt_max``.

The linear phase. Near the uniform state ``rho_bar`` the perturbation grows like
``e^{sigma t}``; an absolute error control sees only ``eps sigma^2 dt^2`` for a perturbation of
size ``eps`` and would misjudge the growth of a small perturbation. So while the state is in
the regime of linear theory, ``max_i |rho_i / rho_bar - 1| < linear_amplitude``, the step is
also bounded by ``rate_cfl / sigma_max`` (:meth:`Simulation.rate_at`, the explicit solver's
bound). Past it the linearization about the uniform state no longer describes the dynamics
(after the collapse the clusters are stable and ``sigma_max`` is the wrong time scale) and the
error control alone sets the step. ``linear_amplitude = 0`` switches the rate bound off.

Noise: on meshes whose diffusion matrix ``L`` (:class:`~meanfield.pde.diffusion.Diffusion`) has
the M-matrix sign pattern (the circle's three-point Laplacian) the diffusion joins the
implicit matrix, ``B - |C| L |C|^{-1}``, which keeps every property above. Elsewhere (the
quadratic fluxes of the sphere) every implicit Euler transport solve of size ``h`` is followed
by the diffusion's own implicit step of size ``h`` (SDIRK2, flux-corrected to stay
nonnegative, conservative): a Lie splitting, first order in ``h`` like the transport step,
so the error estimate and the extrapolation above apply to the composite step unchanged. MPI: serial only (a partition of more
than one rank is a ``ValueError``); the causal solver (``positions``) is refused too.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .solver import Simulation, State
from .timestepping import NonFiniteStateError

__all__ = ["ImplicitSimulation"]


class ImplicitSimulation(Simulation):
    """The finite-volume solver with linearly implicit, error-controlled steps.

    Parameters
    ----------
    mesh, model, field, backend, tolerance, noise :
        As for :class:`~meanfield.pde.solver.Simulation`.
    scheme : str
        ``"muscl"`` (the default, as for :class:`~meanfield.pde.solver.Simulation`: the
        limited reconstruction, its face ratios frozen over each step; module docstring) or
        ``"upwind"`` (face values the cell averages).
    rtol, atol : float
        Relative and absolute (density units) tolerances of the local error estimate per step
        (module docstring). ``rtol > 0``, ``atol >= 0``.
    rate_cfl : float
        The step is at most ``rate_cfl / sigma_max`` while the state is within
        ``linear_amplitude`` of uniform.
    linear_amplitude : float
        ``>= 0``; the relative deviation ``max |rho / rho_bar - 1|`` below which the rate bound
        applies (0: never).
    dt_max : float
        Upper bound of every step.
    dt_first : float, optional
        The first trial step; default ``rate_cfl / sigma_max`` (capped by ``dt_max``).
    safety, max_growth : float
        Controller constants: ``dt_new = dt min(max_growth, max(0.2, safety err^{-1/2}))``.
    dist, positions :
        Refused (``ValueError``) unless serial and not causal.

    Attributes
    ----------
    dt_next : float
        The controller's proposal for the next step (the state of the controller: a bitwise
        restart must restore it).
    rejected : int
        Steps rejected by the error test (or non-finite trial solutions).
    last : dict
        Of the last accepted step: ``dt``, ``err``, ``theta``, ``cfl_ratio`` (dt over the
        explicit forward-Euler CFL bound ``|C_i| / sum w |u|`` of the velocity at its start).
    """

    def __init__(self, mesh, model, scheme: str = "muscl", field=None, backend: str = "auto",
                 rtol: float = 1e-3, atol: float = 1e-6, rate_cfl: float = 0.1, linear_amplitude: float = 0.5,
                 dt_max: float = math.inf, dt_first: float | None = None, safety: float = 0.9,
                 max_growth: float = 4.0, tolerance: float = 1e-10, dist=None, noise: float = 0.0,
                 positions: int | None = None):
        if scheme not in ("upwind", "muscl"):
            raise ValueError(f"the implicit stepper transports with the upwind matrix, its face values cell averages "
                             f"(\"upwind\") or the limited reconstruction frozen over the step (\"muscl\"); got "
                             f"scheme {scheme!r}")
        if dist is not None and getattr(dist, "size", 1) > 1:
            raise ValueError(f"the implicit stepper is serial: a partition over {dist.size} MPI ranks is not "
                             "supported; run it on one rank")
        if positions is not None:
            raise ValueError("the implicit stepper solves one density: the causal solver (domain.positions) "
                             "is not supported")
        for name, value, low, strict in (("rtol", rtol, 0.0, True), ("atol", atol, 0.0, False),
                                         ("rate_cfl", rate_cfl, 0.0, True),
                                         ("linear_amplitude", linear_amplitude, 0.0, False),
                                         ("safety", safety, 0.0, True), ("dt_max", dt_max, 0.0, True)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                    or math.isnan(value) or (value <= low if strict else value < low) \
                    or (name != "dt_max" and name != "linear_amplitude" and not math.isfinite(value)):
                raise ValueError(f"{name} must be a number {'>' if strict else '>='} {low:g}, got {value!r}")
        if not (isinstance(max_growth, (int, float)) and math.isfinite(max_growth) and max_growth > 1):
            raise ValueError(f"max_growth must be a finite number > 1, got {max_growth!r}")
        if dt_first is not None and not (isinstance(dt_first, (int, float)) and math.isfinite(dt_first)
                                         and dt_first > 0):
            raise ValueError(f"dt_first must be a finite number > 0, got {dt_first!r}")
        super().__init__(mesh, model, scheme=scheme, field=field, backend=backend, rate_cfl=rate_cfl,
                         dt_max=dt_max, tolerance=tolerance, noise=noise)
        self.rtol, self.atol = float(rtol), float(atol)
        self.linear_amplitude = float(linear_amplitude)
        self.safety, self.max_growth = float(safety), float(max_growth)
        self._noise_matrix = None
        #: noise on a mesh whose Laplacian is not monotone (the sphere): each implicit Euler
        #: transport solve is followed by the positive implicit diffusion step (Lie splitting)
        self.split_noise = False
        if self.diffusion is not None:
            lap = sp.csr_matrix(self.diffusion.matrix)
            off = lap - sp.diags(lap.diagonal())
            if off.nnz and off.data.min() < 0:
                self.split_noise = True
            else:
                a = sp.diags(mesh.areas)
                # dm/dt = |C| L |C|^{-1} m: subtracted from B (column sums zero: L conserves mass)
                self._noise_matrix = sp.csc_matrix(a @ lap @ sp.diags(1.0 / mesh.areas))
        self._left_cells, self._right_cells = left, right = mesh.edge_cells[:, 0], mesh.edge_cells[:, 1]
        n = mesh.n_cells
        self._inv_left = 1.0 / mesh.areas[left]
        self._inv_right = 1.0 / mesh.areas[right]
        # The sparsity pattern of I + h B (and of the noise matrix), in CSC order, once: every
        # step only sums its values into place (np.bincount over the fixed slots).
        rows = [np.arange(n), left, right, right, left]
        cols = [np.arange(n), left, left, right, right]
        if self._noise_matrix is not None:
            coo = self._noise_matrix.tocoo()
            rows.append(coo.row)
            cols.append(coo.col)
            self._noise_values = coo.data
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        keys, self._slot = np.unique(cols.astype(np.int64) * n + rows, return_inverse=True)
        self._slot = self._slot.ravel()
        self._indices = (keys % n).astype(np.int32)
        self._indptr = np.searchsorted(keys // n, np.arange(n + 1)).astype(np.int32)
        self._n_identity = n
        #: the LU column ordering: along the circle the natural order has fill only in the last
        #: row and column (cyclic tridiagonal); elsewhere COLAMD
        self._permc = "NATURAL" if mesh.manifold == "circle" else "COLAMD"
        rate = self.rate_at(0.0)
        guess = self.rate_cfl / rate if rate > 0 and math.isfinite(rate) else 1e-3
        self.dt_next = float(min(dt_first if dt_first is not None else guess, self.dt_max))
        self.last: dict = {}

    # -- the operator ---------------------------------------------------------------------
    def face_ratios(self, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(g_L, g_R)``, each ``(E, q)``: the limited MUSCL face value of the left and the
        right cell of every edge over that cell's average (in ``[0, 2]``; 1 in an empty cell),
        frozen over a step (module docstring, "MUSCL"); ``None`` for ``"upwind"`` (all 1)."""
        if self.fv.scheme == "upwind":
            return None
        left, right = self.fv.edge_states(rho)
        rl, rr = rho[self._left_cells][:, None], rho[self._right_cells][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            gl = np.where(rl > 0, left / rl, 1.0)
            gr = np.where(rr > 0, right / rr, 1.0)
        return np.clip(gl, 0.0, 2.0), np.clip(gr, 0.0, 2.0)

    def _edge_rates(self, un: np.ndarray, ratios=None) -> tuple[np.ndarray, np.ndarray]:
        """``(a^+ / |C_L|, a^- / |C_R|)`` per edge: the rates at which the upwind fluxes empty
        the left and the right cell (the face values ``ratios`` times the cell averages)."""
        w = self.mesh.edge_weights
        up, down = np.maximum(un, 0.0), np.maximum(-un, 0.0)
        if ratios is not None:
            up, down = up * ratios[0], down * ratios[1]
        plus = np.sum(w * up, axis=1)
        minus = np.sum(w * down, axis=1)
        return plus * self._inv_left, minus * self._inv_right

    def system_matrix(self, un: np.ndarray, h: float, ratios=None) -> sp.csc_matrix:
        """``I + h B(u)`` in CSC form (module docstring): ``dm/dt = -B m`` for the upwind fluxes
        of the edge normal velocities ``un (E, q)``, in the cell masses, the face values
        ``ratios`` (:meth:`face_ratios`) times the cell averages; column sums of ``B`` zero,
        off-diagonal entries <= 0. With noise, ``B`` includes ``-|C| L |C|^{-1}``."""
        return self._assemble(self._edge_rates(un, ratios), h)

    def _assemble(self, rates: tuple[np.ndarray, np.ndarray], h: float) -> sp.csc_matrix:
        """:meth:`system_matrix` from the edge rates of :meth:`_edge_rates`."""
        out_l, out_r = rates
        parts = [np.ones(self._n_identity), h * out_l, -h * out_l, h * out_r, -h * out_r]
        if self._noise_matrix is not None:
            parts.append(-h * self._noise_values)
        data = np.bincount(self._slot, np.concatenate(parts), minlength=self._indices.size)
        n = self._n_identity
        return sp.csc_matrix((data, self._indices, self._indptr), shape=(n, n))

    def transport_matrix(self, un: np.ndarray, ratios=None) -> sp.csc_matrix:
        """``B(u)`` alone: ``(system_matrix(un, 1) - I)`` (for inspection and tests)."""
        return sp.csc_matrix(self.system_matrix(un, 1.0, ratios) - sp.identity(self._n_identity, format="csc"))

    def _solve(self, rates, h: float, m: np.ndarray) -> np.ndarray:
        """``(I + h B)^{-1} m`` (``B`` from the edge ``rates`` of :meth:`_edge_rates`) by a
        sparse LU factorization; with :attr:`split_noise` followed by the implicit diffusion
        step of size ``h`` (positive, conservative:
        :meth:`~meanfield.pde.diffusion.Diffusion.implicit_step`)."""
        out = spla.splu(self._assemble(rates, h), permc_spec=self._permc).solve(m)
        if self.split_noise:
            areas = self.mesh.areas
            # (round-off negatives of an emptied cell would switch the diffusion's limiter off)
            out = self.diffusion.implicit_step(np.maximum(out, 0.0) / areas, h) * areas
        return out

    def _velocity(self, rho: np.ndarray, t: float) -> np.ndarray:
        return self.fv.normal_velocity(rho, t)

    def trial_step(self, rho: np.ndarray, t: float, dt: float, un: np.ndarray | None = None):
        """One step of size ``dt`` from ``rho`` at ``t`` without step control:
        ``(rho_new, err, theta, (r1, r2))`` with the limited extrapolation ``rho_new``, the error
        measure ``err`` (accept when ``<= 1``), the extrapolation weight ``theta`` in [0, 1],
        and the coarse and fine implicit Euler densities. ``un``: the edge normal velocities
        of ``rho`` at ``t`` when already computed."""
        areas = self.mesh.areas
        if un is None:
            un = self._velocity(rho, t)
        m0 = rho * areas
        rates = self._edge_rates(un, self.face_ratios(rho))  # frozen over the coarse and first fine step
        y1 = self._solve(rates, dt, m0)
        yh = self._solve(rates, 0.5 * dt, m0)
        yh_rho = np.maximum(yh, 0.0) / areas  # (round-off negatives of an emptied cell)
        mid = self._edge_rates(self._velocity(yh_rho, t + 0.5 * dt), self.face_ratios(yh_rho))
        y2 = self._solve(mid, 0.5 * dt, yh)
        d = y2 - y1
        neg = d < 0
        with np.errstate(divide="ignore", invalid="ignore"):
            theta = float(min(1.0, np.min(np.maximum(y2[neg], 0.0) / -d[neg], initial=1.0)))
        y = y2 + theta * d
        r1, r2 = y1 / areas, y2 / areas
        with np.errstate(invalid="ignore"):
            scale = self.atol + self.rtol * np.maximum(rho, np.abs(r2))
            err = float(np.max(np.abs(r2 - r1) / scale))
        if not np.all(np.isfinite(y)):
            err = math.inf
        return y / areas, err, theta, (r1, r2)

    # -- the step ---------------------------------------------------------------------------
    def _bound(self, rho: np.ndarray, t: float) -> float:
        """``dt_max``, and ``rate_cfl / sigma_max`` while ``rho`` is within ``linear_amplitude``
        of the uniform density."""
        bound = self.dt_max
        if self.linear_amplitude > 0:
            mean = float(rho @ self.mesh.areas) / self.mesh.total_measure
            if mean > 0 and float(np.max(np.abs(rho / mean - 1.0))) < self.linear_amplitude:
                self.rate = self.rate_at(t)
                bound = min(bound, self.rate_cfl / self.rate)
        return bound

    def step_bounds(self, rho: np.ndarray, t: float = 0.0) -> dict:
        """``{"error": ..., "rate": ..., "dt_max": ...}``: the controller's next step, the rate
        bound (``inf`` outside the linear phase) and ``dt_max``."""
        bound = self._bound(rho, t)
        return {"error": self.dt_next, "rate": bound if bound < self.dt_max else math.inf, "dt_max": self.dt_max}

    def step(self, state: State, t_limit: float = math.inf) -> float:
        """Advance ``state`` in place by one accepted step not passing ``t_limit`` (nor the next
        switch time of the model); returns dt."""
        t = state.t
        t_limit = min(t_limit, self.velocity_field.next_switch(t))
        rho = state.rho
        dt = self.clip_step(t, min(self.dt_next, self._bound(rho, t)), t_limit)
        un = self._velocity(rho, t)
        tries = 0
        for tries in range(60):
            new, err, theta, _ = self.trial_step(rho, t, dt, un=un)
            if err <= 1.0:
                break
            self.rejected += 1
            factor = 0.2 if not math.isfinite(err) else max(0.2, self.safety * err**-0.5)
            dt = self.clip_step(t, dt * factor, t_limit)
        else:
            raise NonFiniteStateError(f"t={t:.6g}: no step passed the error test (dt fell to {dt:.3e})")
        factor = self.max_growth if err == 0 else min(self.max_growth, max(0.2, self.safety * err**-0.5))
        clipped = tries == 0 and dt < self.dt_next and dt == t_limit - t
        # a step shortened to land on t_limit does not shrink the next one
        self.dt_next = min(max(self.dt_next, dt * factor) if clipped else dt * factor, self.dt_max)
        with np.errstate(divide="ignore"):
            self.last = {"dt": dt, "err": err, "theta": theta, "cfl_ratio": dt / self.fv.cfl_dt(un)}
        self._accept(state, new, dt, t_limit)
        return dt
