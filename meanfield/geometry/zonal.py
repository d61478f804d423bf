r"""Zonal (axisymmetric) densities on S^{d-1}, d >= 3, as a finite-volume problem in the polar angle.

A density that depends only on the polar angle ``phi`` about the axis ``e_1``
(``x_1 = cos phi``) is a function on ``[0, pi]`` with the measure

.. math::

    d\sigma = |S^{d-2}| \sin^{d-2}\phi \, d\phi, \qquad
    |S^{k-1}| = \frac{2 \pi^{k/2}}{\Gamma(k/2)}, \qquad
    \int_0^\pi |S^{d-2}| \sin^{d-2}\phi \, d\phi = |S^{d-1}|.

:class:`ZonalMesh` cuts ``[0, pi]`` into ``cells`` uniform bands ``[i h, (i + 1) h]``,
``h = pi / cells``. A band is the set of points of S^{d-1} whose polar angle lies in it; its
measure (``areas``) is ``|S^{d-2}| int sin^{d-2}``, computed by Gauss--Legendre quadrature
with enough points to be exact to round-off. The mesh speaks the
:class:`~meanfield.geometry.mesh.Mesh` interface the finite-volume operator and the solver read,
with every point on one meridian (``x_1 = cos phi``, ``x_2 = sin phi``, the other coordinates
0):

* ``centers (N, d)``: the band midpoints ``phi_i = (i + 1/2) h`` on the meridian (the field
  backend, :class:`~meanfield.fields.zonal.ZonalField`, takes each as the whole band);
* edges: the ``N - 1`` interior circles ``phi_e = (e + 1) h`` between bands ``e`` (left) and
  ``e + 1`` (right); an edge is a (d-2)-sphere of radius ``sin phi_e`` and its weight is its
  measure ``|S^{d-2}| sin^{d-2} phi_e`` (one quadrature point); its normal is the unit
  tangent ``e_phi = (-sin phi, cos phi, 0, ...)``, the direction of increasing ``phi``;
* the poles ``phi = 0, pi`` are points (edges of zero measure: no flux crosses them), so they
  are not edges at all. The two end bands have one edge, listed twice in ``cell_edges`` (the
  interface is a fixed number of faces per cell); both faces are the same point, carry the
  same reconstructed value and the same flux slot, and the CFL sum counts that edge twice
  (a step bound smaller by at most 2 in the end bands, where the field vanishes anyway);
* reconstruction (``muscl``): the gradient of band ``i`` is the centred difference
  ``(rho_{i+1} - rho_{i-1}) / (2 h)`` along ``e_phi``; at the poles the missing neighbour is
  the mirror image of the end band itself (a smooth zonal density is an even function of
  ``phi`` about 0 and about ``pi``), so the end gradient is ``(rho_1 - rho_0) / (2 h)`` (and
  its mirror at ``pi``): exact for ``rho = a + c phi^2``. The limiter's bounds are the band
  and its neighbours.

``sfc_order()`` is ``None`` (bands are numbered along ``phi``, so a contiguous share of an MPI
rank is an interval).
"""

from __future__ import annotations

import math

import numpy as np

from .mesh import Mesh

__all__ = ["ZonalDiffusion", "ZonalMesh", "sphere_measure"]


def sphere_measure(k: int) -> float:
    """``|S^{k-1}| = 2 pi^{k/2} / Gamma(k/2)``, the measure of the unit sphere in R^k (k >= 1;
    ``|S^0| = 2``: two points)."""
    return 2.0 * math.pi ** (0.5 * k) / math.gamma(0.5 * k)


class ZonalMesh(Mesh):
    """Uniform polar bands of S^{d-1} (zonal densities about ``e_1``), ``d >= 3``.

    Parameters
    ----------
    d : int
        Ambient dimension, ``d >= 3`` (on the circle a zonal density is simply an even
        function of the angle: use :class:`~meanfield.geometry.mesh.CircleMesh`).
    cells : int
        Number of bands in ``phi``, ``>= 3``.

    Attributes
    ----------
    h : float
        ``pi / cells``.
    angles : (N,) array
        Band midpoints ``phi_i``.
    edge_angles : (N - 1,) array
        Interior edge angles ``phi_e = (e + 1) h``.
    ring_measure : float
        ``|S^{d-2}|``: ``areas = ring_measure * int sin^{d-2}``.
    """

    manifold = "zonal"

    def __init__(self, d: int, cells: int):
        if isinstance(d, bool) or int(d) != d or d < 3:
            raise ValueError(f"a zonal mesh needs an integer dimension d >= 3, got {d!r}")
        if isinstance(cells, bool) or int(cells) != cells or cells < 3:
            raise ValueError(f"a zonal mesh needs an integer number of cells >= 3, got {cells!r}")
        self.d = int(d)
        m = int(cells)
        self.h = math.pi / m
        self.ring_measure = sphere_measure(self.d - 1)
        self.total_measure = sphere_measure(self.d)
        idx = np.arange(m)
        self.angles = (idx + 0.5) * self.h
        self.centers = self.meridian(self.angles)
        self.areas = self._band_measures()
        self.edge_angles = (np.arange(m - 1) + 1.0) * self.h
        e = np.arange(m - 1)
        self.edge_cells = np.stack([e, e + 1], axis=1)
        self.edge_points = self.meridian(self.edge_angles)[:, None, :]
        self.edge_weights = (self.ring_measure * np.sin(self.edge_angles) ** (self.d - 2))[:, None]
        self.edge_normals = self.tangent_at(self.edge_angles)[:, None, :]
        # neighbours: the mirror image of an end band is the band itself
        self.neighbors = np.stack([np.maximum(idx - 1, 0), np.minimum(idx + 1, m - 1)], axis=1)
        # faces: edge i - 1 (this band is its right cell) and edge i (its left cell); the end
        # bands list their one edge twice
        left_face = np.clip(idx - 1, 0, m - 2)
        right_face = np.clip(idx, 0, m - 2)
        self.cell_edges = np.stack([left_face, right_face], axis=1)
        sign = np.stack([-np.ones(m), np.ones(m)], axis=1)
        sign[0] = 1.0  # band 0 is the left cell of edge 0 on both faces
        sign[-1] = -1.0  # band N - 1 is the right cell of edge N - 2 on both faces
        self.cell_edge_sign = sign
        # Derived geometry (Mesh._finalize's least-squares gradient is singular here: every
        # displacement lies along e_phi, the other d - 2 tangent directions see none).
        # The centred gradient along e_phi, with the mirror neighbour at the poles (a zero
        # displacement to the mirror would make it one-sided there):
        # g_i = (rho_{i+1} - rho_{i-1}) / (2 h).
        tangent = self.tangent_at(self.angles)  # (N, d)
        grad = np.empty((m, self.d, 2))
        grad[:, :, 0] = -tangent / (2.0 * self.h)
        grad[:, :, 1] = tangent / (2.0 * self.h)
        self.grad_operator = grad
        # centre to face: +-h/2 along e_phi (exactly the geodesic displacement on the meridian)
        face_phi = self.edge_angles[self.cell_edges]  # (N, 2)
        self.face_displacement = ((face_phi - self.angles[:, None])[:, :, None, None]
                                  * tangent[:, None, None, :])
        self.perimeter = np.sum(self.edge_weights[self.cell_edges], axis=(1, 2))

    # -- points --------------------------------------------------------------------------
    def meridian(self, phi) -> np.ndarray:
        """Points ``(cos phi, sin phi, 0, ...)`` of the meridian, shape ``phi.shape + (d,)``."""
        phi = np.asarray(phi, dtype=float)
        out = np.zeros(phi.shape + (self.d,))
        out[..., 0] = np.cos(phi)
        out[..., 1] = np.sin(phi)
        return out

    def tangent_at(self, phi) -> np.ndarray:
        """The unit tangent ``e_phi = (-sin phi, cos phi, 0, ...)`` on the meridian."""
        phi = np.asarray(phi, dtype=float)
        out = np.zeros(phi.shape + (self.d,))
        out[..., 0] = -np.sin(phi)
        out[..., 1] = np.cos(phi)
        return out

    def tangent(self, points: np.ndarray) -> np.ndarray:
        """Unit tangent ``e_phi`` at points of the meridian (``x_2 >= 0``)."""
        pts = np.asarray(points, dtype=float)
        out = np.zeros_like(pts)
        out[..., 0] = -pts[..., 1]
        out[..., 1] = pts[..., 0]
        return out

    @staticmethod
    def polar_angle(points: np.ndarray) -> np.ndarray:
        """``phi = arccos x_1`` of points of S^{d-1}, computed as ``atan2(|x_{2..d}|, x_1)`` (accurate
        at the poles)."""
        pts = np.asarray(points, dtype=float)
        return np.arctan2(np.linalg.norm(pts[..., 1:], axis=-1), pts[..., 0])

    # -- measures and quadrature ---------------------------------------------------------
    def _gauss(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Gauss--Legendre points ``(N, n)`` in ``phi`` of every band and the weights
        ``|S^{d-2}| sin^{d-2} phi w_q`` (not rescaled)."""
        x, w = np.polynomial.legendre.leggauss(int(n))
        phi = (np.arange(self.n_cells)[:, None] + 0.5 * (x[None, :] + 1.0)) * self.h
        wts = self.ring_measure * np.sin(phi) ** (self.d - 2) * (0.5 * self.h * w[None, :])
        return phi, wts

    def _band_measures(self) -> np.ndarray:
        # sin^{d-2} is entire: on a band of width h <= pi / 3, 24 + d / 2 Gauss points integrate
        # it to round-off (the quadrature error of an entire function decays faster than any
        # power of the number of points).
        return self._gauss(24 + self.d // 2)[1].sum(axis=1)

    def band_quadrature(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Polar angles ``(N, n)`` and weights ``(N, n)`` of an ``n``-point Gauss--Legendre rule in
        ``phi`` on every band with the density ``|S^{d-2}| sin^{d-2} phi``, the weights of a
        band rescaled to sum to its measure exactly (constants are integrated exactly; smooth
        functions with error ``O(h^{2n})`` relative)."""
        phi, wts = self._gauss(max(1, int(n)))
        wts *= (self.areas / wts.sum(axis=1))[:, None]
        return phi, wts

    def cell_quadrature(self, degree: int) -> tuple[np.ndarray, np.ndarray]:
        """Points ``(N, n, d)`` on the meridian and weights ``(N, n)`` summing to the band measures:
        Gauss--Legendre in ``phi`` with ``n = (degree + d - 2) // 2 + 1`` points (exact for
        ``sin^{d-2} phi`` times a polynomial of degree ``degree`` in ``phi`` up to the rescaling),
        so cell averages of a zonal density ``f(x)`` are ``int_band f dsigma / |band|``."""
        phi, wts = self.band_quadrature((int(degree) + self.d - 2) // 2 + 1)
        return self.meridian(phi), wts

    @property
    def max_degree(self) -> int:
        """Highest Gegenbauer degree resolved: two bands per wavelength ``2 pi / l``."""
        return self.n_cells

    def sfc_order(self) -> None:
        """Bands are numbered along ``phi`` already."""
        return None

    # -- zonal diagnostics ---------------------------------------------------------------
    def mean(self, masses: np.ndarray) -> np.ndarray:
        """``int x dmu`` of the zonal measure with band masses ``masses``: ``(sum_i m_i <cos phi>_i,
        0, ..., 0)``, ``<cos phi>_i`` the band average of ``x_1`` (every other coordinate averages
        to 0 over each ring). The order parameter is its norm."""
        phi, wts = self.band_quadrature(8)
        avg = np.sum(np.cos(phi) * wts, axis=1) / self.areas
        out = np.zeros(self.d)
        out[0] = float(np.dot(np.asarray(masses, dtype=float), avg))
        return out

    def gegenbauer(self, l: int, phi) -> np.ndarray:
        """``C_l^{((d-2)/2)}(cos phi)``: the zonal harmonic of degree ``l`` on S^{d-1}."""
        from scipy import special

        return special.eval_gegenbauer(int(l), 0.5 * (self.d - 2), np.cos(np.asarray(phi, dtype=float)))

    def gegenbauer_coefficient(self, rho: np.ndarray, l: int, n: int = 8) -> float:
        """``<rho, C_l> / <C_l, C_l>`` with ``rho`` piecewise constant on the bands (the
        ``L^2(S^{d-1})`` projection coefficient of the cell averages on the degree-``l``
        zonal harmonic; the band integrals of ``C_l`` by an ``n``-point rule)."""
        phi, wts = self.band_quadrature(n)
        c = self.gegenbauer(l, phi)
        num = float(np.dot(np.asarray(rho, dtype=float), np.sum(c * wts, axis=1)))
        # <C_l, C_l> on S^{d-1} in closed form (Funk--Hecke normalisation)
        lam = 0.5 * (self.d - 2)
        norm = (self.ring_measure * math.pi * 2.0 ** (1.0 - 2.0 * lam) * math.gamma(l + 2.0 * lam)
                / (math.factorial(l) * (l + lam) * math.gamma(lam) ** 2))
        return num / norm


class ZonalDiffusion:
    r"""The zonal Laplacian ``c (1/sin^{d-2} phi) d/dphi (sin^{d-2} phi d rho/dphi)`` on the band
    averages of a :class:`ZonalMesh` (``c = sigma^2 / 2``: the noise of SPEC section 5), and an
    implicit, positive, conservative step for it.

    Space: two-point fluxes through the edge (d-2)-spheres,

    .. math::

        (L \rho)_i = \frac{c}{|B_i|} \sum_{e \in \partial B_i} |S^{d-2}| \sin^{d-2}\phi_e \,
            \frac{\rho_{\text{across}} - \rho_i}{h},

    exact in flux form (``sum_i |B_i| (L rho)_i = 0``: mass to round-off), no flux through the
    poles. On a uniform grid in ``phi`` the centres are the midpoints of the edges' normal lines, so
    the two-point flux is consistent (second order; the eigenvalue of the degree-``l`` Gegenbauer
    mode converges to ``-c l (l + d - 2)`` at second order). ``L`` is tridiagonal with nonnegative
    off-diagonals, so ``I - a L`` is an M-matrix for every ``a > 0``.

    Time: ``implicit_step(rho, dt)`` is SDIRK2 (L-stable, ``gamma = 1 - 1/sqrt 2``; second
    order), which is not positive for every step; where its result has a negative value the step
    is redone with implicit Euler (positive at every ``dt``). Each solve is a banded solve,
    ``O(N)``; the result is rescaled by the mass ratio (a correction of round-off size, see
    :meth:`implicit_step`).

    The interface is that of :class:`~meanfield.pde.diffusion.Diffusion` that the solver's
    Strang splitting uses (``implicit_step``, ``apply``, ``rate``, ``matrix``).
    """

    GAMMA = 1.0 - 1.0 / math.sqrt(2.0)

    def __init__(self, mesh: ZonalMesh, coefficient: float):
        c = float(coefficient)
        if not (math.isfinite(c) and c >= 0):
            raise ValueError(f"the diffusion coefficient must be a finite number >= 0, got {coefficient!r}")
        self.mesh = mesh
        self.coefficient = c
        t = c * mesh.edge_weights[:, 0] / mesh.h  # transmissibility of each interior edge
        a = mesh.areas
        n = mesh.n_cells
        #: (L rho)_i = lower_i rho_{i-1} + diag_i rho_i + upper_i rho_{i+1}
        self.lower = np.zeros(n)
        self.upper = np.zeros(n)
        self.lower[1:] = t / a[1:]
        self.upper[:-1] = t / a[:-1]
        self.diag = -(self.lower + self.upper)
        self.stats = {"solves": 0, "euler_fallbacks": 0}

    @property
    def matrix(self):
        """``L`` as a CSR matrix ``(N, N)``."""
        from scipy import sparse

        return sparse.diags([self.lower[1:], self.diag, self.upper[:-1]], [-1, 0, 1], format="csr")

    def apply(self, rho: np.ndarray) -> np.ndarray:
        """``L rho``."""
        out = self.diag * rho
        out[1:] += self.lower[1:] * rho[:-1]
        out[:-1] += self.upper[:-1] * rho[1:]
        return out

    def rate(self, l) -> np.ndarray:
        """The exact decay rate ``c l (l + d - 2)`` of the degree-``l`` zonal harmonic."""
        l = np.asarray(l, dtype=float)
        return self.coefficient * l * (l + self.mesh.d - 2)

    def solve(self, b: np.ndarray, a: float) -> np.ndarray:
        """``(I - a L)^{-1} b`` (a banded solve)."""
        from scipy.linalg import solve_banded

        ab = np.zeros((3, self.mesh.n_cells))
        ab[0, 1:] = -a * self.upper[:-1]
        ab[1] = 1.0 - a * self.diag
        ab[2, :-1] = -a * self.lower[1:]
        self.stats["solves"] += 1
        return solve_banded((1, 1), ab, b)

    def implicit_step(self, rho: np.ndarray, dt: float, method: str = "sdirk2") -> np.ndarray:
        """One step of ``d rho / dt = L rho`` (see the class docstring), nonnegative for
        nonnegative ``rho``."""
        if dt <= 0 or self.coefficient == 0:
            return np.array(rho, dtype=float)
        if method not in ("sdirk2", "euler"):
            raise ValueError(f"unknown method {method!r}; choose \"sdirk2\" or \"euler\"")
        u = None
        if method == "sdirk2":
            g = self.GAMMA
            u1 = self.solve(rho, g * dt)
            # stage 2: (I - g dt L) u = rho + (1 - g) dt L u1, with dt L u1 = (u1 - rho) / g
            u = self.solve(rho + (1.0 - g) / g * (u1 - rho), g * dt)
            if np.any(u < 0):
                self.stats["euler_fallbacks"] += 1
                u = None
        if u is None:
            # implicit Euler: an M-matrix solve, nonnegative up to round-off at an empty band
            u = np.maximum(self.solve(rho, dt), 0.0)
        # The solves conserve mass exactly in exact arithmetic; in floating point the tiny pole
        # bands (measure ~ h^{d-1}) make I - a L badly scaled and the mass drifts by up to
        # ~1e-13 per solve at large a. Rescaling by the mass ratio (1 + O(1e-13)) removes that
        # round-off drift and keeps the sign.
        m0, m1 = float(np.dot(rho, self.mesh.areas)), float(np.dot(u, self.mesh.areas))
        if m0 > 0 and m1 > 0:
            u *= m0 / m1
        return u
