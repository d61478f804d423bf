r"""The attention field of a zonal (axisymmetric) measure on S^{d-1}, reduced to one dimension exactly.

Setting
-------
Write points of S^{d-1}, d >= 3, as ``x = cos(phi) e_1 + sin(phi) u`` with the polar angle
``phi in [0, pi]`` and ``u`` a unit vector of ``e_1^perp`` (a point of S^{d-2}). A zonal measure
is a superposition of *rings*: the uniform probability measure on ``{cos(phi') e_1 + sin(phi') w :
w in S^{d-2}}``. For an *axial* head -- ``Q^T K = diag(a, c, ..., c)`` and
``V = diag(p, q, ..., q)`` in the basis ``e_1, e_1^perp`` (the isotropic heads ``Q^T K = c I``,
``V = v I`` are ``a = c``, ``p = q = v``), the heads that commute with the rotations fixing
``e_1`` -- the logit of ``x`` against a ring point ``y = cos(phi') e_1 + sin(phi') w`` is

.. math::

    \beta \langle Qx, Ky \rangle = \beta a \cos\phi \cos\phi' + r \langle u, w \rangle,
    \qquad r = \beta c \sin\phi \sin\phi'.

The reduction
-------------
For ``n = d - 1`` and ``nu = (d - 3) / 2`` the classical integral over S^{n-1} (by Funk--Hecke,
or the generating function of the Bessel function)

.. math::

    \frac{1}{|S^{d-2}|} \int_{S^{d-2}} e^{r \langle u, w \rangle} \, d\sigma(w)
      = \Gamma(\nu + 1) \Big(\frac{2}{r}\Big)^{\nu} I_\nu(r)
      = {}_0F_1\big(; \nu + 1; r^2/4\big) =: \Phi_\nu(r)

is even in ``r`` and equals 1 at ``r = 0``. Its gradient in ``r u`` is the first moment:
``d/dr [r^{-nu} I_nu(r)] = r^{-nu} I_{nu+1}(r)`` gives

.. math::

    \frac{1}{|S^{d-2}|} \int_{S^{d-2}} e^{r \langle u, w \rangle} \, w \, d\sigma(w)
      = \Gamma(\nu + 1) \Big(\frac{2}{r}\Big)^{\nu} I_{\nu+1}(r) \, u
      = \frac{r}{2(\nu + 1)} \Phi_{\nu+1}(r) \, u =: \Psi_\nu(r) \, u

(odd in ``r``; ``~ r / (d - 1)`` at 0). So a ring at ``phi'`` contributes to the two sums of
the field at ``x``

.. math::

    Z \mathrel{+}= e^{\beta a \cos\phi\cos\phi'} \Phi_\nu(r), \qquad
    N \mathrel{+}= e^{\beta a \cos\phi\cos\phi'}
        \big( p \cos\phi' \, \Phi_\nu(r) \, e_1 + q \sin\phi' \, \Psi_\nu(r) \, u \big),

and ``X(x) = P_x(N / Z)`` (SA) or ``P_x N`` (USA). ``N`` lies in ``span(e_1, u) = span(x,
e_phi)``, so the field is tangent along ``e_phi = -sin(phi) e_1 + cos(phi) u``:

.. math::

    X(x) = \frac{-\sin\phi \, N_1 + \cos\phi \, N_u}{Z} \, e_\phi .

For the isotropic head these are ``|S^{d-2}|^{-1}`` times the brief's
``int e^{b<x, y>} y dsigma = e^{b cos phi cos phi'} |S^{d-2}| Gamma((d-1)/2) (2/r)^{(d-3)/2}
(I_{(d-3)/2}(r) cos phi' e_1 + I_{(d-1)/2}(r) sin phi' u)`` with ``r = b sin phi sin phi'``.

Scaling: ``Phi`` and ``Psi`` are evaluated as ``e^{-|r|} Phi`` (``scipy.special.ive``, or the
``0F1`` series for ``r`` below ``2 sqrt(nu + 1)``, where ``(2/r)^nu`` would lose digits), so a
ring's weight is ``exp(E - E_max)`` times bounded functions with
``E = beta a cos(phi) cos(phi') + |r| <= beta max(|a|, |c|)`` and ``E_max`` the largest ``E``
of the target's row: nothing overflows at any ``beta``. USA multiplies back
``exp(E_max - offset)`` (the model's :attr:`~meanfield.fields.attention.AttentionModel.logit_offset`)
and raises :class:`~meanfield.fields.attention.FieldOverflowError` past
:data:`~meanfield.fields.attention.USA_LOGIT_LIMIT`, as the direct sums do.

Bands
-----
With a :class:`~meanfield.geometry.zonal.ZonalMesh` and the mesh's band centres as the
sources, each source stands for its whole band with the density constant in it (the
finite-volume cell average): the band integral ``int_band rho (...) |S^{d-2}| sin^{d-2} phi' dphi'``
by a ``band_points``-point Gauss--Legendre rule in ``phi'`` (weights rescaled to the band's
measure), i.e. ``band_points`` rings per band. Other sources (not the mesh's centres) are one
ring each, at their own polar angle, of mass their weight: the field of the axisymmetrized
measure. Only the polar angle of every point is read, so targets may be anywhere on S^{d-1}.

The finite-volume operator's plans (:meth:`ZonalField.plan`) keep, for each pair of target and
source plans, the three ``(targets, sources)`` kernel matrices; a stage is then three
matrix--vector products with the band masses.

This backend is for zonal PDEs only: particles are not rings, and their field is not this one.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from .attention import USA_LOGIT_LIMIT, USA_OVERFLOW_FIX, AttentionModel, FieldOverflowError, check_sources
from .plans import PointPlan, as_points

__all__ = ["ZonalField", "axial_parameters", "ring_functions", "zonal_velocity"]


def axial_parameters(model: AttentionModel, tol: float = 1e-14) -> tuple[float, float, float, float] | None:
    """``(a, c, p, q)`` when ``Q^T K = diag(a, c, ..., c)`` and ``V = diag(p, q, ..., q)`` (to
    ``tol`` relative), else ``None``: the heads that keep zonal measures zonal."""
    d = model.d
    qk = model.Q.T @ model.K
    out = []
    for m in (qk, model.V):
        scale = max(1.0, float(np.abs(m).max()))
        c = float(np.trace(m[1:, 1:]) / (d - 1))
        target = np.diag(np.r_[m[0, 0], np.full(d - 1, c)])
        if np.abs(m - target).max() > tol * scale:
            return None
        out += [float(m[0, 0]), c]
    return out[0], out[1], out[2], out[3]


def _scaled_phi(nu: float, r: np.ndarray) -> np.ndarray:
    """``e^{-r} Phi_nu(r) = e^{-r} Gamma(nu + 1) (2/r)^nu I_nu(r)`` for ``r >= 0``: the ``0F1``
    series ``sum_k (r^2/4)^k / (k! (nu + 1)_k)`` below ``r = 2 sqrt(nu + 1)`` (the terms' ratio
    is then ``<= 1/(k + 1)``), ``ive`` above."""
    r = np.asarray(r, dtype=float)
    out = np.empty_like(r)
    small = r < 2.0 * math.sqrt(nu + 1.0)
    if np.any(small):
        rs = r[small]
        z = 0.25 * rs * rs
        term = np.ones_like(rs)
        total = np.ones_like(rs)
        for k in range(1, 200):
            term *= z / (k * (nu + k))
            total += term
            if not np.any(term > 1e-17 * total):
                break
        out[small] = total * np.exp(-rs)
    if not np.all(small):
        rl = r[~small]
        with np.errstate(divide="ignore"):
            out[~small] = np.exp(special.gammaln(nu + 1.0) + nu * np.log(2.0 / rl) + np.log(special.ive(nu, rl)))
    return out


def ring_functions(d: int, r) -> tuple[np.ndarray, np.ndarray]:
    """``(e^{-|r|} Phi_nu(r), e^{-|r|} Psi_nu(r))``, ``nu = (d - 3) / 2``: the ring average of
    ``e^{r <u, w>}`` over ``w in S^{d-2}`` and the coefficient of ``u`` in the ring average of
    ``e^{r <u, w>} w``, both times ``e^{-|r|}`` (see the module docstring)."""
    nu = 0.5 * (d - 3)
    r = np.asarray(r, dtype=float)
    a = np.abs(r)
    phi = _scaled_phi(nu, a)
    psi = np.sign(r) * (a / (2.0 * (nu + 1.0))) * _scaled_phi(nu + 1.0, a)
    return phi, psi


class ZonalField:
    """The attention field of zonal measures (sums of rings) for one axial head.

    Parameters
    ----------
    model : AttentionModel
        ``d >= 3``, ``Q^T K = diag(a, c, ..., c)``, ``V = diag(p, q, ..., q)``
        (:func:`axial_parameters`; isotropic heads are the case ``a = c``, ``p = q``), SA or
        USA, any ``beta``, shifted or not.
    mesh : ZonalMesh, optional
        Sources equal to ``mesh.centers`` are its bands (each integrated by ``band_points``
        rings); without a mesh every source is one ring.
    band_points : int
        Gauss--Legendre points in ``phi'`` per band.

    ``field(targets (N, d), sources (M, d), weights (M,), project=True)``: the field
    ``(N, d)``; ``project=False`` the attention average ``N / Z`` (or ``N``) before ``P_x``.
    """

    name = "zonal"

    def __init__(self, model: AttentionModel, mesh=None, band_points: int = 4):
        if model.d < 3:
            raise ValueError(f"the zonal field needs d >= 3, got d = {model.d} (on the circle use the circle mesh)")
        axial = axial_parameters(model)
        if axial is None:
            raise ValueError("the zonal field needs a head that keeps zonal measures zonal: Q^T K = diag(a, c, ..., c) "
                             "and V = diag(p, q, ..., q) about the axis e_1 (e.g. isotropic Q^T K = c I, V = v I)")
        if mesh is not None and (getattr(mesh, "manifold", None) != "zonal" or mesh.d != model.d):
            raise ValueError(f"mesh must be a ZonalMesh in R^{model.d}")
        if isinstance(band_points, bool) or int(band_points) != band_points or band_points < 1:
            raise ValueError(f"band_points must be an integer >= 1, got {band_points!r}")
        self.model = model
        self.mesh = mesh
        self.band_points = int(band_points)
        self.a, self.c, self.p, self.q = axial
        self.d = model.d
        if mesh is not None:
            phi, wts = mesh.band_quadrature(self.band_points)
            self._band_phi = phi.ravel()
            #: ring mass per unit band mass: the quadrature weights over the band measure
            self._band_share = (wts / mesh.areas[:, None])

    # -- plans -------------------------------------------------------------------------------
    def plan(self, points) -> PointPlan:
        """A :class:`~meanfield.fields.plans.PointPlan` of ``points``; as the targets of a call it
        keeps the kernel matrices against each source plan it met."""
        return PointPlan(self, _check_points(self.d, as_points(points)))

    # -- geometry ----------------------------------------------------------------------------
    @staticmethod
    def _frame(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Polar angles ``(N,)`` and the unit vectors ``u`` of ``e_1^perp`` ``(N, d)`` (``e_2`` at the poles)."""
        rest = x.copy()
        rest[:, 0] = 0.0
        s = np.linalg.norm(rest, axis=1)
        phi = np.arctan2(s, x[:, 0])
        u = np.zeros_like(x)
        ok = s > 0
        u[ok] = rest[ok] / s[ok, None]
        u[~ok, 1] = 1.0
        return phi, u

    def _rings(self, sources: np.ndarray):
        """``(ring angles (R,), share (M, k) or None)``: the band rings when ``sources`` are the
        mesh's centres (``share[j, q]``: the mass of ring ``q`` of band ``j`` per unit band mass),
        else one ring per source."""
        mesh = self.mesh
        if mesh is not None and sources.shape == mesh.centers.shape and np.array_equal(sources, mesh.centers):
            return self._band_phi, self._band_share
        return self._frame(sources)[0], None

    def _kernels(self, phi_t: np.ndarray, phi_r: np.ndarray, share):
        """Scaled kernels ``(K0, K1, Ku)`` ``(N, M)`` and row exponents ``E_max (N,)``: the
        contributions per unit mass of each source to ``Z``, ``N_1`` and ``N_u`` at each target,
        times ``exp(-E_max)``, ``E_max`` the largest exponent ``E`` of the row. ``share``:
        collapse the band rings onto their bands."""
        beta = self.model.beta
        ct, st = np.cos(phi_t)[:, None], np.sin(phi_t)[:, None]
        cr, sr = np.cos(phi_r)[None, :], np.sin(phi_r)[None, :]
        r = (beta * self.c) * (st * sr)
        expo = (beta * self.a) * (ct * cr) + np.abs(r)
        emax = expo.max(axis=1) if expo.shape[1] else np.zeros(expo.shape[0])
        # e^{beta a cos cos'} Phi(r) e^{-E_max} = e^{E - E_max} (e^{-|r|} Phi(r))
        scale = np.exp(expo - emax[:, None])
        f0, f1 = ring_functions(self.d, r)
        k0 = scale * f0
        k1 = (self.p * cr) * k0
        ku = (self.q * sr) * (scale * f1)
        if share is not None:
            n, k = phi_t.shape[0], share.shape[1]
            k0, k1, ku = (np.einsum("njk,jk->nj", m.reshape(n, -1, k), share) for m in (k0, k1, ku))
        return k0, k1, ku, emax

    def kernels(self, targets, sources):
        """The kernels of :meth:`_kernels` for these points (kept in a target plan of this field
        for each source plan), with the targets' frame: ``(K0, K1, Ku, E_max, phi, u)``."""
        tp = targets if isinstance(targets, PointPlan) and targets.field is self else None
        sp = sources if isinstance(sources, PointPlan) else None

        def make():
            x = _check_points(self.d, as_points(targets))
            y = _check_points(self.d, as_points(sources))
            phi, u = self._frame(x)
            phi_r, share = self._rings(y)
            return self._kernels(phi, phi_r, share) + (phi, u)

        if tp is None or sp is None:
            return make()
        cache = tp._prepared
        key = ("zonal kernels", id(sp))
        got = cache.get(key)
        if got is None or got[0] is not sp:
            got = cache[key] = (sp, make())
        return got[1]

    # -- evaluation --------------------------------------------------------------------------
    def __call__(self, targets, sources, weights, project: bool = True) -> np.ndarray:
        model = self.model
        y, w = check_sources(model, _check_points(self.d, as_points(sources)), weights)
        k0, k1, ku, emax, phi, u = self.kernels(targets, sources)
        if k0.shape[1] != w.shape[0]:
            raise ValueError(f"weights must have shape ({k0.shape[1]},), got {w.shape}")
        z = k0 @ w
        n1 = k1 @ w
        nu = ku @ w
        if model.normalized:
            bad = ~(z > 0)
            if np.any(bad):
                # every ring with mass lies so far below the row's largest exponent that its
                # weight underflowed: those rows again, scaled by the sources with mass only
                rows = np.flatnonzero(bad)
                phi_r, share = self._rings(y)
                keep = w > 0
                if share is not None:
                    phi_r, share = phi_r.reshape(share.shape)[keep].ravel(), share[keep]
                else:
                    phi_r = phi_r[keep]
                k0b, k1b, kub, _ = self._kernels(phi[rows], phi_r, share)
                z[rows], n1[rows], nu[rows] = k0b @ w[keep], k1b @ w[keep], kub @ w[keep]
            n1 = n1 / z
            nu = nu / z
        else:
            top = float(emax.max()) - model.logit_offset if emax.size else 0.0
            if top > USA_LOGIT_LIMIT:
                raise FieldOverflowError(f"USA attention overflows: beta <Qx, Ky> reaches {top:.1f}; {USA_OVERFLOW_FIX}")
            factor = np.exp(emax - model.logit_offset)
            n1 = n1 * factor
            nu = nu * factor
            if not (np.all(np.isfinite(n1)) and np.all(np.isfinite(nu))):
                raise FieldOverflowError(f"USA attention sum overflowed double precision; {USA_OVERFLOW_FIX}")
        if not project:
            out = nu[:, None] * u
            out[:, 0] += n1
            return out
        s, c = np.sin(phi), np.cos(phi)
        tangential = -s * n1 + c * nu  # the e_phi component
        out = (tangential * c)[:, None] * u
        out[:, 0] = -tangential * s
        return out

    def polar_component(self, targets, sources, weights) -> np.ndarray:
        """The ``e_phi`` component of the field at ``targets`` ``(N,)`` (the zonal velocity
        ``d phi / dt``)."""
        x = _check_points(self.d, as_points(targets))
        phi, u = self._frame(x)
        v = self(targets, sources, weights)
        e_phi = np.cos(phi)[:, None] * u
        e_phi[:, 0] = -np.sin(phi)
        return np.einsum("nd,nd->n", v, e_phi)

    def __repr__(self) -> str:
        return f"ZonalField(d={self.d}, {self.model.kind}, beta={self.model.beta:g}, band_points={self.band_points})"


def _check_points(d: int, points) -> np.ndarray:
    x = np.ascontiguousarray(points, dtype=float)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"points must have shape (N, {d}), got {x.shape}")
    return x


def zonal_velocity(model, mesh, band_points: int = 4):
    """The :class:`~meanfield.dynamics.velocity.Velocity` of ``model`` (a
    :class:`~meanfield.dynamics.model.VelocityModel` or an :class:`AttentionModel`) on a
    :class:`~meanfield.geometry.zonal.ZonalMesh`: a :class:`ZonalField` per head (any number of
    axial heads with weights, fixed or on a schedule). Terms that do not keep zonal measures
    zonal are refused: a perceptron, random heads, a causal mask, a non-axial head."""
    from ..dynamics.model import as_velocity_model
    from ..dynamics.velocity import Velocity

    dynamics = as_velocity_model(model)
    if dynamics.d != mesh.d:
        raise ValueError(f"model is for d = {dynamics.d} but the zonal mesh lives in R^{mesh.d}")
    if dynamics.causal:
        raise ValueError("the zonal PDE has no causal mask (model.mask must be \"none\")")
    if dynamics.random_heads is not None:
        raise ValueError("random heads (iid Gaussian Q, K, V) do not keep zonal measures zonal")
    for terms in dynamics.all_terms():
        if terms.perceptron is not None:
            raise ValueError("a perceptron term does not keep zonal measures zonal")
    return Velocity(dynamics, lambda head: ZonalField(head, mesh, band_points))
