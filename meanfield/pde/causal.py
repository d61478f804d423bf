r"""Finite volumes for the causal mean field: position bands times the cells of the manifold.

A causal head (``model.mask = "causal"``, ALiBi slope ``lambda``) moves a density
``f(t, s, x)`` on ``[0, 1] x S^{d-1}`` with uniform ``s``-marginal and no transport in ``s``:

.. math::

    \partial_t f + \operatorname{div}_x\big(f\, X[f](s, x)\big) = 0, \qquad
    X(s, x) = P_x\Big( \frac{\int_0^s \int e^{\beta \langle Qx, Ky\rangle - \lambda (s - s')}\, V y\, f(s', y)\,dy\,ds'}
                            {Z(s, x)} \Big).

Discretization
--------------
``[0, 1]`` is cut into ``P`` bands ``[p h, (p + 1) h)`` (``h = 1 / P``) and the density is
constant in ``s`` on each: the unknowns ``rho (P, N)`` are, in row ``p``, the cell averages
of band ``p``'s density ``f(s_p, .)`` on the ``N`` cells (each row a probability density,
``sum_i rho[p, i] |C_i| = 1``; nothing moves in ``s``, so every row keeps its mass). The
field of band ``p`` is the causal field at its centre ``s_p = (p + 1/2) h``: the ordinary
(unmasked) field of the prefix measure

.. math::

    m_p = \sum_{q \le p} \omega_{pq}\, \rho_q |C|, \qquad
    \omega_{pq} = \int_{[qh, (q+1)h) \cap [0, s_p]} e^{-\lambda (s_p - s')}\, ds'

(:func:`~meanfield.fields.causal.band_measures`: the ALiBi weight integrated exactly over
the bands, half of the own band; a decayed prefix sum, ``O(P N)``). One stage evaluates
the field of the ``P`` measures at the edge points (``P`` field evaluations, never ``P^2``)
and takes the fluxes of every band with the scheme of
:class:`~meanfield.pde.finite_volume.FiniteVolume` (the same reconstruction, upwinding and
positivity bound, band by band). The step bounds (CFL, positivity) are minima over the bands.

Accuracy. Linearized about the uniform state (SA, ``Q = K = V = I``, mode ``cos k theta``)
the band amplitudes obey ``dA/dt = c_h H_P A`` with ``c_h`` the finite-volume rate of the
mode (``c sinc(kh_theta/2)``, the same in every band: the prefix measures are normalized by
SA) and ``(H_P A)_p = sum_q omega_pq A_q / sum_q omega_pq`` the midpoint-band quadrature of
``H a(s) = int_0^s W'(s') / W(s) a(s') ds'`` (the solver integrates that system to 2e-7).
Its local error is ``h^2 a'(s_p) / (8 W(s_p))`` (the half own band, constant in ``s``),
so against the exact solutions (SPEC section 5; tests/test_causal_pde.py, ``P = 8 .. 64``):

- ``a_0 = 1``: exact in ``s`` (``H_P 1 = 1``); ``a_0`` flat at ``s = 0`` (``W^2``, a bump in
  ``s``): second order in the max norm over the bands (measured 2.00-2.05, lambda = 0 and 3);
- ``a_0'(0) != 0`` (``a_0 = W``): the first band's error is ``O(h)`` (order 1.0 over all
  bands), and the Green's function, which grows as ``s' -> 0``, carries the ``h^2 / s'`` errors
  of the first bands to every ``s``: order 1.5 at ``s >= 1/4`` for lambda = 0 (1.6 at
  ``P = 1024`` in the band system alone), 2.0 for lambda = 3 at these ``P``.

MPI. With a :class:`~meanfield.parallel.Partition` every rank owns the same cells in every
band: it evaluates the fields of all bands at its own edge points, updates its cells of every
band, and the owned values ``(P, n_owned)`` are replicated by one ``Allgatherv``
(:meth:`~meanfield.parallel.Partition.gather_bands`); one reduction per stage for the step
bounds of all bands.
"""

from __future__ import annotations

import copy

import numpy as np

from ..dynamics.velocity import Velocity
from ..fields.causal import band_measures
from ..geometry.mesh import Mesh
from .finite_volume import FiniteVolume

__all__ = ["CausalFiniteVolume", "unmasked_velocity"]


def unmasked_velocity(velocity: Velocity) -> Velocity:
    """The velocity of the same terms without the causal mask, sharing ``velocity``'s backends
    and plans' settings: its ordinary call ``(targets, sources, weights (M,), t=)`` is the
    field of one measure, the form every band's prefix measure is evaluated in.

    Serially the bands go to its band form (weights ``(P, M)``, :meth:`Velocity.__call__`: the
    direct sums take all bands in one pass over the logits); under MPI each band is one
    ordinary split call (the split's ``evaluate`` hook takes one measure).
    """
    if not velocity.model.causal:
        return velocity
    twin = copy.copy(velocity)
    model = copy.copy(velocity.model)
    model.mask, model.alibi = "none", 0.0
    twin.model = model
    return twin


class CausalFiniteVolume:
    """The semi-discrete operator ``d rho / dt = L(rho)`` of the causal mean field,
    ``rho (P, N)`` (module docstring).

    Parameters
    ----------
    mesh : Mesh
    field : Velocity or AttentionField
        A :class:`~meanfield.dynamics.velocity.Velocity` of a causal model (its ALiBi slope is
        ``alibi`` unless given), or the unmasked field of one measure (a non-causal velocity, a
        backend): each band's field is its field of the band's prefix measure.
    positions : int
        ``P >= 1``, the number of position bands of ``[0, 1]``.
    scheme : str
        Finite-volume scheme (:data:`~meanfield.pde.finite_volume.SCHEMES`).
    partition : meanfield.parallel.Partition, optional
        This MPI rank's cells (the same in every band).
    alibi : float, optional
        ``lambda >= 0``; default the causal velocity's (0 for an unmasked field).

    Attributes ``mesh``, ``field`` (as given), ``band_field`` (the unmasked velocity of the
    bands), ``scheme``, ``partition``, ``positivity_cfl``, ``n_owned``, ``positions``
    (``P``), ``centres (P,)`` (the band centres ``s_p``), ``alibi`` and ``fv`` (the
    :class:`FiniteVolume` of one band) are read by the solver and the outputs.
    """

    def __init__(self, mesh: Mesh, field, positions: int, scheme: str = "muscl", partition=None,
                 alibi: float | None = None):
        if isinstance(positions, bool) or int(positions) != positions or positions < 1:
            raise ValueError(f"domain.positions must be an integer >= 1, got {positions!r}")
        self.positions = int(positions)
        self.centres = (np.arange(self.positions) + 0.5) / self.positions
        self.mesh = mesh
        self.field = field
        causal = isinstance(field, Velocity) and field.model.causal
        if alibi is None:
            alibi = field.model.alibi if causal else 0.0
        self.alibi = float(alibi)
        band_measures(np.zeros((1, 1)), self.alibi)  # checks alibi
        self.band_field = unmasked_velocity(field) if causal else field
        #: the operator of one band (fluxes, reconstruction, plans of the edge points)
        self.fv = FiniteVolume(mesh, self.band_field, scheme, partition=partition)
        self.band_field = self.fv.field
        self.scheme = scheme
        self.partition = partition
        self.positivity_cfl = self.fv.positivity_cfl
        self.n_owned = self.fv.n_owned
        self.n_targets = self.fv.n_targets

    def _check(self, rho: np.ndarray) -> np.ndarray:
        rho = np.asarray(rho, dtype=float)
        if rho.shape != (self.positions, self.mesh.n_cells):
            raise ValueError(f"a causal density has shape (positions, cells) = ({self.positions}, "
                             f"{self.mesh.n_cells}), got {rho.shape}")
        return rho

    def masses(self, rho: np.ndarray) -> np.ndarray:
        """The cell masses of every band, ``(P, N)`` (rows sum to 1)."""
        return self._check(rho) * self.mesh.areas

    def band_measures(self, rho: np.ndarray) -> np.ndarray:
        """The prefix measures ``m (P, N)`` whose ordinary fields are the bands' causal fields."""
        return band_measures(self.masses(rho), self.alibi)

    def _fields(self, targets, rho: np.ndarray, t: float) -> np.ndarray:
        """The field of every band's prefix measure at ``targets`` (this rank's), ``(P, n, d)``."""
        fv, mesh = self.fv, self.mesh
        measures = self.band_measures(rho)
        if self.partition is None:
            at = fv._at(t)
            if isinstance(self.band_field, Velocity):  # the band form: one pass of the direct sums for all bands
                return self.band_field(targets, fv._centers, measures, **at)
            return np.stack([self.band_field(targets, fv._centers, m, **at) for m in measures])
        part = self.partition
        return np.stack([part.field(self.band_field, targets, mesh.centers, m, fv._owned_centers, t=t)
                         for m in measures])

    def normal_velocity(self, rho: np.ndarray, t: float = 0.0) -> np.ndarray:
        """``X(s_p, .) . n`` at the quadrature points of the (local) edges, ``(P, E, q)``."""
        x = self._fields(self.fv._targets, rho, t)
        normals = self.fv._normals
        return np.einsum("peqd,eqd->peq", x.reshape((self.positions,) + normals.shape), normals)

    def velocity_at_centers(self, rho: np.ndarray, t: float = 0.0) -> np.ndarray:
        """The field of every band at the cell centres, ``(P, N, d)`` (every rank gets all)."""
        if self.partition is None:
            return self._fields(self.fv._centers, rho, t)
        return self.partition.gather_bands(self._fields(self.fv._owned_centers, rho, t))

    def rhs(self, rho: np.ndarray, un: np.ndarray | None = None, t: float = 0.0):
        """``(L(rho), un, dt_pos)``: the time derivative of the (owned) cell averages of every
        band ``(P, n_owned)``, the edge normal velocities ``(P, E, q)`` used, and the largest
        forward-Euler step keeping every band ``>= 0`` (over all bands and ranks). ``rho`` is
        the whole density ``(P, N)``."""
        rho = self._check(rho)
        if un is None:
            un = self.normal_velocity(rho, t)
        lu = np.empty((self.positions, self.n_owned))
        dt_pos = np.inf
        for p in range(self.positions):
            lu[p], dt = self.fv.local_rhs(rho[p], un[p])
            dt_pos = min(dt_pos, dt)
        if self.partition is not None:
            dt_pos, finite = self.partition.min_and_all(dt_pos, bool(np.all(np.isfinite(lu))))
            if not finite:
                lu.fill(np.nan)
        return lu, un, dt_pos

    def cfl_dt(self, un: np.ndarray) -> float:
        """The smallest :meth:`FiniteVolume.cfl_dt` of the bands (over all ranks)."""
        dt = min(self.fv.local_cfl_dt(u) for u in un)
        return dt if self.partition is None else self.partition.min(dt)
