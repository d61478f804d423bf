"""The PDE solver: finite volumes in space, SSP Runge--Kutta in time, adaptive steps.

The step is the smallest of

* the transport CFL bound ``cfl * min_i |C_i| / sum_{edges of i} w |X.n|``,
* the interaction time scale ``rate_cfl / sigma_max`` (:meth:`AttentionModel.rate_bound`):
  near the uniform state the velocity is tiny and the CFL bound alone would take huge
  steps that get the exponential growth wrong,
* ``dt_max`` and the time left to the next output time (steps land on output times).

Each stage is checked against the exact forward-Euler positivity bound; a step that would
make a density negative is rejected and retried with the admissible step.

A causal model (``mask = "causal"``) with ``positions = P`` is solved on ``P`` position bands
times the cells (:class:`~meanfield.pde.causal.CausalFiniteVolume`, ``state.rho (P, N)``) by
the same steps; the bounds above are then minima over the bands.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..dynamics.model import as_velocity_model
from ..dynamics.velocity import Velocity
from ..fields.attention import AttentionModel
from ..fields.backends import make_backend
from .finite_volume import FiniteVolume
from ..geometry.mesh import Mesh
from .timestepping import SSPRK, SSPRK3, NonFiniteStateError, StepRejected, Stepper

__all__ = ["State", "Simulation", "NonFiniteStateError", "make_field", "make_velocity"]

log = logging.getLogger("meanfield")


@dataclass
class State:
    """The solution at time ``t``: cell averages ``rho`` after ``steps`` steps."""

    t: float
    rho: np.ndarray
    steps: int = 0


def make_field(model: AttentionModel, backend: str = "auto", tolerance: float = 1e-10, n_targets: int | None = None,
               n_sources: int | None = None, dist=None, tokens: bool = False):
    """The attention-field backend named ``backend`` for ``model``.

    ``"direct"``: exact blocked sums. ``"spectral"``: truncated Fourier (S^1, any 2 x 2
    Q, K, V; :mod:`meanfield.fields.spectral_circle`) or spherical-harmonic expansions (S^2:
    isotropic models by Funk--Hecke, :mod:`meanfield.fields.spectral_sphere`; any Q, K, V by a
    separable expansion, :mod:`meanfield.fields.spectral_sphere_general`), accurate to
    ``tolerance`` relative; a ``ValueError`` where no spectral backend exists for the model
    (other dimensions) or its coefficients would not fit in memory. ``"auto"``:
    spectral where it exists and its estimated cost for ``n_targets`` x ``n_sources`` is
    below half the direct cost, else direct. With a :class:`~meanfield.parallel.Distributor`
    ``dist`` of more than one rank, the targets are split across the ranks (particles; the
    finite-volume solver splits its cells itself, :class:`~meanfield.parallel.Partition`).
    ``tokens``: the head evaluates ``n_targets`` causal tokens; ``"auto"`` then weighs the
    prefix sums against the masked direct sums (:func:`~meanfield.fields.backends.make_backend`).
    """
    field = make_backend(model, backend, tolerance, n_targets, n_sources, tokens=tokens)
    if dist is not None and dist.size > 1:
        from ..parallel import DistributedField

        return DistributedField(field, dist)
    return field


def make_velocity(model, backend: str = "auto", tolerance: float = 1e-10, n_targets: int | None = None,
                  n_sources: int | None = None, dist=None, tokens: bool = False):
    """The :class:`~meanfield.dynamics.velocity.Velocity` of ``model`` (a
    :class:`~meanfield.dynamics.model.VelocityModel` or one :class:`AttentionModel`), each head's
    backend from :func:`make_field` ``(head, backend, tolerance, n_targets, n_sources)``; with
    a :class:`~meanfield.parallel.Distributor` of more than one rank the targets are split
    across the ranks (:class:`~meanfield.parallel.DistributedField`, the particles).
    ``tokens``: the velocity will evaluate causal tokens (the particles of a causal model),
    which ``"auto"`` weighs by their own costs."""
    dynamics = as_velocity_model(model)

    def head_backend(head):
        return make_field(head, backend, tolerance, n_targets=n_targets, n_sources=n_sources, tokens=tokens)

    velocity = Velocity(dynamics, head_backend)
    if dist is not None and dist.size > 1:
        from ..parallel import DistributedField

        return DistributedField(velocity, dist)
    return velocity


class Simulation(Stepper):
    """Evolve a cell density on ``mesh`` under a velocity model.

    Parameters
    ----------
    mesh : Mesh
    model : VelocityModel or AttentionModel
        The terms of the velocity (:mod:`meanfield.dynamics`); an :class:`AttentionModel` is
        one head of weight 1.
    scheme : str
        Finite-volume scheme (``"upwind"`` or ``"muscl"``).
    field : Velocity or AttentionField, optional
        The velocity (:class:`~meanfield.dynamics.velocity.Velocity`) or one backend; default:
        a :class:`Velocity` of ``model`` with a :func:`make_field` ``(head, backend)`` per head.
    cfl, rate_cfl, dt_max : float
        Step bounds (see module docstring).
    backend, tolerance :
        Field backend of each head when ``field`` is not given (:func:`make_field`).
    dist : meanfield.parallel.Distributor, optional
        With more than one rank the cells are split (:class:`~meanfield.parallel.Partition`):
        each rank updates its own; ``state.rho`` stays the whole density on every rank.
    integrator : SSPRK
        Time integrator (default SSP-RK3).
    noise : float
        ``sigma >= 0``: the diffusion ``(sigma^2 / 2) Lap_S rho``, Strang-split (module
        :mod:`meanfield.pde.diffusion`).
    positions : int, optional
        ``P >= 1`` makes this the causal solver (:mod:`meanfield.pde.causal`; the model must
        be causal, ``mask = "causal"``): ``state.rho`` is then ``(P, N)``, row ``p`` the
        density of position band ``p`` (each row a probability density on the cells), the
        field of every band that of its prefix measure; the noise diffuses every band.
        Everything else (steps, positivity retries, switch times, rate bounds, MPI,
        restarts) is the same; a causal model without ``positions`` or ``positions``
        without one is a ``ValueError``.

    Steps land exactly on the model's switch times (:meth:`Velocity.next_switch`), so every
    step lies in one interval of constant terms.
    """

    def __init__(self, mesh: Mesh, model, scheme: str = "muscl", field=None, backend: str = "auto",
                 cfl: float = 0.4, rate_cfl: float = 0.1, dt_max: float = math.inf, integrator: SSPRK = SSPRK3,
                 tolerance: float = 1e-10, dist=None, noise: float = 0.0, positions: int | None = None):
        dynamics = as_velocity_model(model)
        if mesh.d != dynamics.d:
            raise ValueError(f"model is for d = {dynamics.d} but the mesh lives in R^{mesh.d}")
        if positions is not None:
            if isinstance(positions, bool) or not isinstance(positions, (int, np.integer)) or positions < 1:
                raise ValueError(f"domain.positions must be an integer >= 1 (the position bands of a causal "
                                 f"mean field), got {positions!r}")
            if not dynamics.causal:
                raise ValueError(f"domain.positions = {positions} is for a causal mean field: it needs "
                                 "model.mask = \"causal\"")
            positions = int(positions)
        elif dynamics.causal:
            raise ValueError("a causal model (model.mask = \"causal\") lives on [0, 1] x the manifold: give "
                             "domain.positions, the number of position bands")
        #: ``P`` for the causal solver (``state.rho (P, N)``), else ``None``
        self.positions = positions
        if not 0 < cfl <= 1:
            raise ValueError(f"cfl must be in (0, 1], got {cfl}")
        self.mesh = mesh
        self.model = model
        self.dynamics = dynamics
        self.partition = None
        if dist is not None and dist.size > 1:
            from ..parallel import Partition

            self.partition = Partition(dist, mesh)
        if field is None:
            # (the domain split takes care of MPI: each head's backend is the serial one)
            field = make_velocity(dynamics, backend, tolerance, n_targets=mesh.edge_points.shape[0] * mesh.edge_points.shape[1],
                                  n_sources=mesh.n_cells)
        if positions is None:
            self.fv = FiniteVolume(mesh, field, scheme, partition=self.partition)
        else:
            from .causal import CausalFiniteVolume

            self.fv = CausalFiniteVolume(mesh, field, positions, scheme, partition=self.partition,
                                         alibi=dynamics.alibi)
        self.velocity_field = self.fv.field
        self.cfl = cfl
        self.rate_cfl = rate_cfl
        self.dt_max = dt_max
        self.integrator = integrator
        self.rate = self.rate_at(0.0)
        self.rejected = 0
        if not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        self.noise = float(noise)
        #: the diffusion (sigma^2 / 2) Lap_S (:class:`~meanfield.pde.diffusion.Diffusion`), or None
        self.diffusion = None
        if self.noise > 0:
            from .diffusion import Diffusion

            # one exact factorization per step size of the ladder (reuse=1: no Krylov solves with a
            # neighbour's factorization, whose choice would depend on the history of the run and
            # break bitwise restarts); the steps take few distinct sizes (LADDER)
            if mesh.manifold == "zonal":  # the zonal Laplacian: tridiagonal in the polar angle
                from ..geometry.zonal import ZonalDiffusion

                self.diffusion = ZonalDiffusion(mesh, 0.5 * self.noise**2)
            else:
                self.diffusion = Diffusion(mesh, 0.5 * self.noise**2, reuse=1.0, max_factorizations=4)

    def rate_at(self, t: float) -> float:
        """The largest growth rate of the terms acting at ``t`` over the harmonic degrees the
        mesh resolves (:meth:`Terms.rate_bound`)."""
        return self.velocity_field.rate_bound(t, max_mode=self.mesh.max_degree)

    def step_bounds(self, rho: np.ndarray, t: float = 0.0) -> dict:
        """The bounds of the next step from ``rho`` at ``t`` (one field evaluation): ``{"cfl": ...,
        "rate": ..., "dt_max": ...}``; the step is their minimum (before landing on output times)."""
        un = self.fv.rhs(rho, t=t)[1]
        return {"cfl": self.cfl * self.integrator.ssp_coefficient * self.fv.cfl_dt(un),
                "rate": self.rate_cfl / self.rate_at(t), "dt_max": self.dt_max}

    def step(self, state: State, t_limit: float = math.inf) -> float:
        """Advance ``state`` in place by one adaptive step not passing ``t_limit`` (nor the
        next switch time of the model); returns dt."""
        t = state.t
        t_limit = min(t_limit, self.velocity_field.next_switch(t))
        stage0 = self.fv.rhs(state.rho, t=t)
        un = stage0[1]
        self.rate = self.rate_at(t)
        dt = min(self.cfl * self.integrator.ssp_coefficient * self.fv.cfl_dt(un), self.rate_cfl / self.rate, self.dt_max)
        if self.diffusion is not None:
            return self._split_step(state, dt, t_limit)
        dt = self.clip_step(state.t, dt, t_limit)
        if self.partition is None:
            def operator(u):
                return self.fv.rhs(u, t=t)

            u0 = state.rho
        else:  # the integrator updates the owned cells; each stage replicates the density
            def operator(u):
                return self.fv.rhs(self._gather(u), t=t)

            u0 = self._owned(state.rho)
        for _ in range(30):
            try:
                rho = self.integrator.step(operator, u0, dt, stage0=stage0)
                break
            except StepRejected as rej:
                self.rejected += 1
                log.debug("t=%.6g: step %.3e rejected for positivity, retry with %.3e", state.t, dt, 0.9 * rej.dt_allowed)
                dt = 0.9 * rej.dt_allowed
        else:
            raise NonFiniteStateError(f"t={state.t:.6g}: no admissible step found (dt fell to {dt:.3e})")
        if self.partition is not None:
            rho = self._gather(rho)
        self._accept(state, rho, dt, t_limit)
        return dt

    def _owned(self, rho: np.ndarray) -> np.ndarray:
        """This rank's cells of ``rho`` (of every band: the causal solver)."""
        return rho[self.partition.cells] if self.positions is None else rho[:, self.partition.cells]

    def _gather(self, local: np.ndarray) -> np.ndarray:
        """The whole density from every rank's owned cells (of every band)."""
        return self.partition.gather(local) if self.positions is None else self.partition.gather_bands(local)

    #: Diffusion steps are rounded down to this ladder (2^(k/4)), so that a run factorizes the
    #: implicit diffusion matrix for a few step sizes only (plus the steps that land on output
    #: and switch times).
    LADDER = 4

    def _split_step(self, state: State, dt: float, t_limit: float) -> float:
        """Strang splitting with noise: half a diffusion step (implicit, :class:`Diffusion`), the
        transport step of the integrator, half a diffusion step. Second order in time (the
        diffusion's SDIRK2 and the splitting); mass kept to round-off, densities kept >= 0
        (the transport's positivity check, the diffusion's limited implicit step)."""
        t = state.t
        if math.isfinite(dt) and dt > 0:
            dt = 2.0 ** (math.floor(self.LADDER * math.log2(dt)) / self.LADDER)
        dt = self.clip_step(t, dt, t_limit)
        for _ in range(30):
            half = self._diffuse(state.rho, 0.5 * dt)
            stage0 = self.fv.rhs(half, t=t)
            allowed = self.cfl * self.integrator.ssp_coefficient * self.fv.cfl_dt(stage0[1])
            if dt > allowed:  # the diffused state moves faster: a smaller step (on the ladder)
                self.rejected += 1
                dt = 2.0 ** (math.floor(self.LADDER * math.log2(0.99 * allowed)) / self.LADDER)
                continue
            try:
                rho = self._transport(half, dt, t, stage0)
                break
            except StepRejected as rej:
                self.rejected += 1
                dt = 2.0 ** (math.floor(self.LADDER * math.log2(0.9 * rej.dt_allowed)) / self.LADDER)
        else:
            raise NonFiniteStateError(f"t={t:.6g}: no admissible step found (dt fell to {dt:.3e})")
        rho = self._diffuse(rho, 0.5 * dt)
        self._accept(state, rho, dt, t_limit)
        return dt

    def _diffuse(self, rho: np.ndarray, tau: float) -> np.ndarray:
        if self.positions is None:
            out = self.diffusion.implicit_step(rho, tau)
        else:  # every band diffuses on its own (no transport, nor diffusion, in s)
            out = np.stack([self.diffusion.implicit_step(r, tau) for r in rho])
        if not np.all(np.isfinite(out)):
            raise NonFiniteStateError("the implicit diffusion step is not finite")
        return out

    def _transport(self, rho: np.ndarray, dt: float, t: float, stage0) -> np.ndarray:
        """One transport step of the integrator from the whole density ``rho`` (raises
        :class:`StepRejected`); returns the whole new density."""
        if self.partition is None:
            return self.integrator.step(lambda u: self.fv.rhs(u, t=t), rho, dt, stage0=stage0)
        new = self.integrator.step(lambda u: self.fv.rhs(self._gather(u), t=t), self._owned(rho), dt, stage0=stage0)
        return self._gather(new)

    def _accept(self, state: State, rho: np.ndarray, dt: float, t_limit: float) -> None:
        if not np.all(np.isfinite(rho)):
            raise NonFiniteStateError(f"t={state.t + dt:.6g}: the density became non-finite")
        low = rho.min()
        if low < 0:
            if low < -1e-14 * rho.max():  # positivity is guaranteed: this is a bug
                raise NonFiniteStateError(f"t={state.t + dt:.6g}: negative density {low:.3e}")
            rho = np.maximum(rho, 0.0)  # round-off at an emptied cell
        state.rho = rho
        self.finish_step(state, dt, t_limit)

    def velocity(self, rho: np.ndarray, t: float = 0.0) -> np.ndarray:
        """The field X(t) at cell centres for the density ``rho``: ``(N, d)``, or ``(P, N, d)``
        for the causal solver (the field of every band)."""
        return self.fv.velocity_at_centers(rho, t)
