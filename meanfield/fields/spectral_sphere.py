"""Spectral attention field on S^2 for the isotropic kernel (Funk--Hecke).

For ``Q^T K = c I`` and ``V = v I`` the attention kernel is zonal: with ``b = beta c``

.. math::

    \\Phi(x) = \\sum_j w_j e^{b \\langle x, y_j\\rangle}, \\qquad
    P_x\\Big(\\sum_j w_j e^{b\\langle x, y_j\\rangle} v\\, y_j\\Big) = \\frac{v}{b}\\, \\nabla_S \\Phi(x),

so the USA field is ``X = (v/b) grad_S Phi`` and the SA field is
``X = (v/b) grad_S Phi / Phi = (v/b) grad_S log Phi``. Funk--Hecke diagonalizes the kernel,

.. math::

    e^{b\\langle x, y\\rangle} = \\sum_{l \\ge 0} 4\\pi\\, i_l(b) \\sum_{m=-l}^{l} Y_{lm}(x)\\, \\overline{Y_{lm}(y)},

(``i_l`` the modified spherical Bessel function, ``i_l(-b) = (-1)^l i_l(b)``), so

1. ``a_lm = sum_j w_j conj(Y_lm(y_j))``: an adjoint spherical-harmonic synthesis at the
   source points (ducc0 ``adjoint_synthesis_general``, spin 0) -- the exact moments of the
   discrete measure, no quadrature;
2. multiply by ``lambda_l = 4 pi i_l(b)``, truncated at ``lmax`` chosen from ``b`` and the
   tolerance;
3. synthesize ``Phi`` (spin 0) and ``grad_S Phi`` (spin 1, ducc0 mode ``"DERIV1"``: the
   components ``(d/dtheta, 1/sin(theta) d/dphi)`` in the local frame ``(e_theta, e_phi)``)
   at the target points (``synthesis_general``).

Cost: ``O((N + M) s^2 + lmax^2 log lmax)`` (ducc0 spreads each point onto an oversampled
``~(2 lmax)^2`` Fourier grid with a kernel of width ``s ~ 14`` at double precision; see
:func:`spectral_cost`), against ``O(N M)`` for :class:`~meanfield.fields.attention.DirectField`;
``lmax`` grows like ``sqrt(2 |b| log(1/tol))``.

Scaling. All coefficients are carried as ``lambda_l e^{-|b|}``, so the scaled potential
``Phi_s = Phi e^{-|b|}`` never exceeds the total weight ``W``. The factor cancels in SA; USA
multiplies it back and raises :class:`~meanfield.fields.attention.FieldOverflowError` when
``|b|`` exceeds :data:`~meanfield.fields.attention.USA_LOGIT_LIMIT` (the spectral backend cannot see
individual logits, so it applies the direct backend's limit to the largest possible logit,
``|b|``) or the result is not finite.

SA accuracy and the direct fallback. The transforms are accurate to a small multiple of
``eta`` (the NUFFT accuracy, plus round-off) *relative to the coefficient bounds*
``B_Phi = sum_l |lambda_l| e^{-|b|} sqrt((2l+1)/4pi) |a_l|`` and
``B_g = sum_l |lambda_l| e^{-|b|} sqrt(l(l+1)(2l+1)/4pi) |a_l|`` (``|a_l|`` the l2 norm over
``m``), which bound ``Phi_s`` and ``|grad Phi_s|`` everywhere. ``grad Phi / Phi`` therefore
loses relative accuracy wherever ``Phi_s(x)`` is small compared with ``B_Phi`` -- far from a
concentrated measure at large ``beta``, where the exact ``Phi_s`` can be ``e^{-2|b|} W``. For
every target the backend estimates the absolute SA error,

.. math::

    \\mathrm{err}(x) \\approx |v| \\,\\frac{\\eta\\,(B_g/|b| + \\rho B_\\Phi) + W (\\tau_g + \\rho\\,\\tau_\\Phi)}{\\Phi_s(x)},
    \\qquad \\rho = \\min(1, |X(x)| / |v|),

(``tau_Phi``, ``tau_g`` the truncation tails of ``Phi_s`` and ``|grad Phi_s| / |b|`` per unit
mass, see :func:`spectral_lmax`). ``eta`` is calibrated against measured errors
(:func:`_transform_accuracy`, a factor >= 2.5 of margin) and cannot go below ~1.7e-13 (ducc0's
double-precision floor for the NUFFT is 2e-13; every ``tolerance <= 3e-10`` gives the same
transforms), so targets with ``Phi_s(x) < eta (...) / tolerance`` miss the tolerance: far
from a concentrated measure, where the exact ``Phi_s`` is small against its bound ``B_Phi ~ W``.

The split. Those targets are recomputed from the same measure cut in two: the heaviest
sources (``heavy``) summed directly at them in the same scale (``Phi_h``, ``grad Phi_h / b``,
``D_h``: exact to round-off), the light rest transformed from its own moments (one more
adjoint synthesis, and the syntheses at those targets only). The light part's errors scale
with its weight ``W_l`` (its bounds are at most ``~W_l`` times those of a point mass), so the
estimate becomes ``(eta (B_g,l/|b| + rho B_Phi,l) + W_l (...)) / (Phi_h + Phi_l)``, small
wherever ``W_l`` is small against ``Phi_s(x) tolerance / eta``: a cluster of a few cells is
the heavy part, its faint surroundings the light one
(:func:`~meanfield.fields.sphere_transforms.split_sources` chooses ``W_l`` from the estimates
to minimize the expected cost, and declines when that is not below 3/4 of the direct
fallback's). Targets whose new estimate still exceeds the tolerance (and those not resolved
even with ``Phi_h``) are recomputed with :class:`~meanfield.fields.attention.DirectField`.
``last_split_count`` and ``last_fallback_count`` count the two kinds in the last call.
Measured at ``tolerance = 1e-10`` (the case default; ``beta = 9``, icosahedral level 5, edge
midpoints from cell centres): a smooth von Mises--Fisher density ``exp(2 <x, c>)`` needs
neither; the single cluster a vMF start collapses into sends 20..43% of the targets to the
split (heavy parts of 3..120 cells) and none to the direct sums, at 2..3 times the cost of the
plain transforms; errors <= 3e-13 ``|v|``. At ``beta >~ 30`` ``Phi_s`` falls by ``e^{-2|b|}``
across the sphere, the heavy part must hold nearly all the mass, and the direct fallback
remains. USA has no fallback: its error is absolute, ``~ eta |v| e^{|b|} B_g / |b|``, small
against ``max |X|``.

``b = 0`` is evaluated in closed form: ``X = v P_x(sum_j w_j y_j)`` (divided by ``W`` for SA).

Shifted USA (``model.shift``). The logit offset ``beta ||Q^T K||_2 = |b|``
(:attr:`~meanfield.fields.attention.AttentionModel.logit_offset`) replaces the factor ``e^{|b|}``
by ``e^{|b| - offset} = 1``: the scaled sums *are* the shifted field, finite for any ``b``,
with the same error relative to ``max |X|``; ``lmax`` grows like ``sqrt(|b|)`` (287 at
``|b| = 1000``, 931 at ``10^4`` for the default tolerance).

The attention average before the projection (``project=False``). Its radial part
``<x, sum_j w_j e^{b <x, y_j>} y_j> = d Phi / d b`` is one more spin-0 synthesis, with the
eigenvalues ``4 pi i_l'(b)``, ``i_l' = (l i_{l-1} + (l + 1) i_{l+1}) / (2l + 1)`` (``i_0' =
i_1``; positive terms, no cancellation; ``i_l'(-b) = (-1)^{l+1} i_l'(b)``): ``X = v (grad_S Phi
/ b + x dPhi/db)`` (USA). SA computes the radial part as ``sgn(b) (1 - D / Phi)`` with
``D = Phi - sgn(b) dPhi/db = sum_j w_j (1 - sgn(b) <x, y_j>) e^{b <x, y_j>} >= 0``
(eigenvalues ``lambda_l - sgn(b) 4 pi i_l'(b)``): ``D`` is small where the kernel's mass
concentrates, so its errors stay small against ``Phi`` (``(dPhi/db) / Phi``, a quotient of
two nearly equal sums, loses up to an order of magnitude more). The SA error estimate adds the radial part's (the bound ``B_D`` of ``D_s`` and its
truncation tail ``tau_D``), so the fallback keeps ``tolerance * |v|`` for the whole vector.

Two phases (MPI). A call is ``evaluate(targets, coefficients(sources, weights), sources,
weights)``: :meth:`SpectralSphereField.coefficients` (the moments ``a_lm``) is linear in the
weights, so ranks holding parts of the measure sum (``Allreduce``) their partial arrays;
:meth:`SpectralSphereField.evaluate` needs only the summed coefficients (the total weight is
``sqrt(4 pi) a_00``), plus the whole measure for the SA direct fallback.

General ``Q, K, V`` are handled by :mod:`meanfield.fields.spectral_sphere_general` (a separable
expansion of the kernel built once per model), whose
:func:`~meanfield.fields.spectral_sphere_general.spectral_sphere_field` and
:func:`~meanfield.fields.spectral_sphere_general.spectral_sphere_cost` choose between the two
for any model on S^2. What both backends share (accuracy settings, Bessel tails, truncation
degree, point angles) is in :mod:`meanfield.fields.sphere_transforms`.
"""

from __future__ import annotations

import math

import numpy as np

from .attention import USA_LOGIT_LIMIT, USA_OVERFLOW_FIX, AttentionModel, FieldOverflowError
from .plans import as_points
from .spectral import SphereSpectralField
from .sphere_transforms import (ABSOLUTE_FLOOR, MIN_TOLERANCE, TINY_B, nufft_epsilon, plan_angles, plan_frame,
                                point_angles, scaled_in, spectral_lmax, tails)

__all__ = ["SpectralSphereField", "spectral_cost", "spectral_lmax"]

#: Round-off of the causal prefix-sum path (:meth:`SpectralSphereField.causal_tokens`)
#: relative to the prefix weight, per degree of the truncation: the sums of ``(L + 1)^2``
#: harmonic terms whose magnitudes add up to at most the weight (addition theorem).
#: Measured (shifted USA, ``M_s`` against extended-precision sums, uniform and clustered
#: prompts of 3000 tokens, ``|b|`` = 1..100, ``lambda`` = 0 and 3): at most 2.7e-16 (L + 1),
#: including the conditioning ``~ |b| eps`` of the kernel at double-precision points.
_CAUSAL_ROUNDOFF = 4e-16
#: Doubles held per token block of the causal path.
_CAUSAL_ELEMENTS = 1 << 21

def _transform_accuracy(epsilon: float, lmax: int) -> float:
    """Error of ducc0's transforms relative to the coefficient bounds ``B``.

    Measured on icosahedral levels 3-5 (edge midpoints against cell centres) with uniform,
    random, von Mises--Fisher and clustered measures, ``|b|`` up to 200: the NUFFT error is
    at most ~0.4 ``epsilon`` for ``lmax <~ 20`` and ~0.15 ``epsilon`` above, plus round-off
    ~3e-14. The estimate below exceeds every measured error by a factor of 2.5 or more.
    """
    return (1.0 if lmax <= 20 else 0.5) * epsilon + 2e-16 * (lmax + 50)



def _scaled_in_over_b(lmax: int, b_abs: float) -> np.ndarray:
    """``i_l(b) e^{-b} / b`` for ``l = 1..lmax`` (entry 0 is set to 0), ``b > 0``."""
    if b_abs < TINY_B:  # b^{l-1} / (2l+1)!!, no division by a tiny b
        ls = np.arange(2, lmax + 1)
        return np.concatenate([[0.0], np.cumprod(np.concatenate([[1.0 / 3.0], b_abs / (2.0 * ls + 1.0)]))])
    out = scaled_in(lmax, b_abs) / b_abs
    out[0] = 0.0
    return out



def spectral_cost(model: AttentionModel, n_targets: int, n_sources: int, tol: float = 1e-12) -> float:
    """Cost estimate of one spectral call, in units of one direct pair evaluation.

    :class:`~meanfield.fields.attention.DirectField` costs ``n_targets * n_sources`` such units, so
    a ``backend = "auto"`` choice compares ``spectral_cost(...)`` with
    ``n_targets * n_sources``. The model, calibrated on one core against the direct sums
    (about 5e8 pairs/s), is

        62 (M + N) + 31 N [SA] + n_tr (3.5 lmax^2 log2(lmax) + 26000)

    (NUFFT spreading and interpolation per point; the FFT and Legendre work on the
    ``~(2 lmax)^2`` grid and the fixed overhead of each of the ``n_tr`` transforms, 3 for SA
    and 2 for USA); it matched measured times within ~25% for ``N, M`` from 100 to 5e5 and
    ``lmax`` from 14 to 287. SA targets recomputed by the direct fallback (clustered measures,
    see the module docstring) are not included. Returns ``inf`` when the model is not
    isotropic or ``d != 3``
    (:func:`~meanfield.fields.spectral_sphere_general.spectral_sphere_cost` covers every model).
    """
    iso = model.isotropic() if model.d == 3 else None
    if iso is None:
        return math.inf
    b = model.beta * iso[0]
    n, m = int(n_targets), int(n_sources)
    if b == 0.0:
        return float(n + m)
    lmax = spectral_lmax(b, tol)
    n_tr = 3 if model.normalized else 2
    per_point = 62.0 * (n + m) + (31.0 * n if model.normalized else 0.0)
    return float(per_point + n_tr * (3.5 * lmax**2 * math.log2(lmax + 1) + 26000.0))


class SpectralSphereField(SphereSpectralField):
    """Attention field on S^2 by spherical-harmonic transforms at arbitrary points.

    Implements the :class:`~meanfield.fields.attention.AttentionField` protocol for isotropic
    models (``Q^T K = c I``, ``V = v I``; see the module docstring for the method, the
    accuracy model and the direct fallback), in two phases (:meth:`coefficients`,
    :meth:`evaluate`). Other models raise ``ValueError`` here: use
    :func:`~meanfield.fields.spectral_sphere_general.spectral_sphere_field`, which builds a
    :class:`~meanfield.fields.spectral_sphere_general.GeneralSphereField` for them.

    Parameters
    ----------
    model : AttentionModel
        Must have ``d = 3`` and be isotropic (``model.isotropic()`` not ``None``).
    tolerance : float
        Target accuracy, at least ``1e-13``. SA: absolute error ``<= tolerance * |v|`` at
        every target (estimated, with the direct fallback where the transforms cannot
        deliver it). USA: sets the truncation and the NUFFT accuracy; the error is absolute,
        ``~1e-13 |v| W e^{|b|}`` at most (``W`` the total weight), with no fallback. Against
        ``max |X|`` both agree with the direct sums to ~1e-13 unless the field nearly
        vanishes (e.g. a uniform density, where ``X`` is only the mesh's quadrature error).

    Attributes
    ----------
    lmax : int
        Truncation degree (:func:`spectral_lmax`).
    b : float
        ``beta c``, the kernel's exponent.
    last_fallback_count : int
        SA targets recomputed by :class:`~meanfield.fields.attention.DirectField` in the last call.
    last_split_count : int
        SA targets recomputed by the split (heavy sources direct, the light rest transformed)
        in the last call.

    Examples
    --------
    >>> import numpy as np
    >>> import meanfield as mf
    >>> from meanfield.fields.spectral_sphere import SpectralSphereField
    >>> field = SpectralSphereField(mf.AttentionModel(d=3, beta=9.0))
    >>> field.lmax
    31
    >>> x = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    >>> X = field(x, x, np.array([0.5, 0.5]))
    >>> bool(np.allclose(X, mf.DirectField(field.model)(x, x, np.array([0.5, 0.5])), atol=1e-12))
    True
    """

    def __init__(self, model: AttentionModel, tolerance: float = 1e-12):
        import ducc0  # noqa: F401  (fail at construction, not at the first call)

        if model.d != 3:
            raise ValueError(f"SpectralSphereField works on S^2 (d = 3), got d = {model.d}")
        iso = model.isotropic()
        if iso is None:
            raise ValueError(
                "SpectralSphereField needs an isotropic model (Q^T K = c I and V = v I); "
                "for general Q, K, V use spectral_sphere_field (GeneralSphereField) or DirectField"
            )
        tol = float(tolerance)
        if not (math.isfinite(tol) and MIN_TOLERANCE <= tol < 1.0):
            raise ValueError(f"tolerance must lie in [{MIN_TOLERANCE:g}, 1), got {tolerance!r}")
        self.model = model
        self.tolerance = tol
        self.c, self.v = iso
        self.b = model.beta * self.c
        self.lmax = spectral_lmax(self.b, tol)
        self.epsilon = nufft_epsilon(tol)
        self.eta = _transform_accuracy(self.epsilon, self.lmax)
        self.last_fallback_count = 0
        b_abs = abs(self.b)
        if b_abs > 0.0:
            il, tau_phi, tau_g = tails(self.lmax + 1, b_abs)
            il = il[: self.lmax + 1]
            self._tau_phi = float(tau_phi[self.lmax])
            self._tau_g = float(tau_g[self.lmax])
            sign = np.where(np.arange(self.lmax + 1) % 2 == 1, -1.0, 1.0) if self.b < 0 else 1.0
            # scaled Funk--Hecke eigenvalues lambda_l e^{-|b|}
            self._lam = 4.0 * math.pi * il * sign
            # ... divided by b for the gradient, so (v / b) grad Phi needs no tiny numbers as
            # b -> 0 (lambda_1 / b -> 4 pi / 3); lambda_0 / b is dropped (no gradient)
            sign_g = sign * math.copysign(1.0, self.b)
            self._lam_g = 4.0 * math.pi * _scaled_in_over_b(self.lmax, b_abs) * sign_g
            # ... their derivatives in b, 4 pi i_l'(b) e^{-|b|} (USA radial part, project=False;
            # i_l'(-b) = (-1)^{l+1} i_l'(|b|)), and lambda_l - sgn(b) lambda_l' (SA radial part:
            # the kernel (1 - sgn(b) <x, y>) e^{b <x, y>}), with their truncation tails per unit mass
            ext = self.lmax + 40
            il_ext = scaled_in(ext + 1, b_abs)
            ls_ext = np.arange(ext + 1, dtype=float)
            dil = (ls_ext * np.concatenate([[0.0], il_ext[:-2]]) + (ls_ext + 1) * il_ext[1:]) / (2 * ls_ext + 1)
            parity = np.where(np.arange(ext + 1) % 2 == 1, -1.0, 1.0) if self.b < 0 else 1.0
            lam_r = 4.0 * math.pi * dil * (-parity if self.b < 0 else 1.0)
            lam_d = 4.0 * math.pi * il_ext[: ext + 1] * parity - math.copysign(1.0, self.b) * lam_r
            self._lam_r, self._lam_d = lam_r[: self.lmax + 1], lam_d[: self.lmax + 1]
            tail = (2 * ls_ext + 1) / (4.0 * math.pi)
            self._tau_r = float(np.sum((np.abs(lam_r) * tail)[self.lmax + 1 :]))
            self._tau_d = float(np.sum((np.abs(lam_d) * tail)[self.lmax + 1 :]))
            # healpy/ducc0 triangular layout: index(l, m) = m (2 lmax + 1 - m) / 2 + l, m >= 0
            L = self.lmax
            self._l_of = np.concatenate([np.arange(m, L + 1) for m in range(L + 1)])
            self._m_mult = np.concatenate([np.full(L + 1 - m, 1.0 if m == 0 else 2.0) for m in range(L + 1)])
            ls = np.arange(L + 1, dtype=float)
            self._w_phi = np.sqrt((2 * ls + 1) / (4 * math.pi))
            self._w_g = self._w_phi * np.sqrt(ls * (ls + 1))

    # -- the protocol, in two phases -----------------------------------------------------
    def __repr__(self) -> str:
        m = self.model
        return (f"SpectralSphereField({m.kind}, beta={m.beta:g}, c={self.c:g}, v={self.v:g}, "
                f"tolerance={self.tolerance:g}, lmax={self.lmax})")

    def coefficients(self, sources, weights) -> np.ndarray:
        """The measure's part of a call: ``a_lm = sum_j w_j conj(Y_lm(y_j))``, ``m >= 0``.

        A float64 array: the complex ``a_lm`` (ducc0's triangular layout) viewed as pairs of
        reals, ``(lmax + 1) (lmax + 2)`` numbers; for ``b = 0`` the four numbers
        ``[W, sum_j w_j y_j]``. Linear in the weights: the coefficients of a measure split
        into parts (MPI ranks) are the sum of the parts' coefficients (``Allreduce``). A part
        may carry no mass.
        """
        plan, y, w = self._measure(sources, weights)
        if self.b == 0.0:
            return np.concatenate([[w.sum()], w @ y])
        size = (self.lmax + 1) * (self.lmax + 2)
        if w.size == 0:
            return np.zeros(size)
        from ducc0.sht.experimental import adjoint_synthesis_general

        alm = adjoint_synthesis_general(
            map=w[None, :], spin=0, lmax=self.lmax, loc=plan_angles(plan), epsilon=self.epsilon, nthreads=1
        )
        return np.ascontiguousarray(alm[0]).view(np.float64)

    # -- the hooks of SphereSpectralField.evaluate ------------------------------------
    @property
    def _degenerate(self) -> bool:
        return self.b == 0.0

    def _read_coefficients(self, coeffs) -> tuple[np.ndarray, float]:
        """The coefficients and the total weight ``W = sqrt(4 pi) a_00`` (``b = 0``: ``W``)."""
        coeffs = np.ascontiguousarray(coeffs, dtype=float)
        size = 4 if self.b == 0.0 else (self.lmax + 1) * (self.lmax + 2)
        if coeffs.shape != (size,):
            raise ValueError(f"coefficients must have shape ({size},) for this field, got {coeffs.shape}")
        return coeffs, float(coeffs[0]) * (1.0 if self.b == 0.0 else math.sqrt(4.0 * math.pi))

    def _vanishes(self) -> bool:
        return self.v == 0.0

    def _constant_field(self, coeffs: np.ndarray, total: float) -> np.ndarray:
        return coeffs[1:] * (self.v / (total if self.model.normalized else 1.0))

    def _transform_field(self, plan, coeffs, total, project):
        return self._transform(plan, coeffs.view(np.complex128)[None, :], total, project)

    # -- the transforms --------------------------------------------------------------------
    def _spectral(self, x, y, w, total, project: bool = True):
        """USA: the field. SA: the field and its estimated error relative to ``|v|`` per target
        (``inf`` where ``Phi_s`` is not resolved). Tangent (the projection of the sums is
        done by :meth:`evaluate`) unless ``project=False``, which adds the radial part;
        needs ``b != 0``. ``total`` is not used: the total weight comes from the coefficients."""
        coeffs = self.coefficients(y, w)
        return self._transform(x, coeffs.view(np.complex128)[None, :], float(coeffs[0]) * math.sqrt(4.0 * math.pi),
                               project)

    def _transform(self, targets, alm, total, project: bool = True):
        """:meth:`_spectral` from the moments ``alm`` (shape (1, nalm)) and the total weight;
        ``targets`` a plan of this field or an array."""
        plan = self._plan_of(targets, as_points(targets))
        x = plan.points
        b_abs = abs(self.b)
        normalized = self.model.normalized
        # shifted USA: e^{|b| - offset} = 1 (offset = beta ||Q^T K||_2 = |b|)
        exponent = b_abs - self.model.logit_offset
        if not normalized and exponent > USA_LOGIT_LIMIT:
            raise FieldOverflowError(
                f"USA attention overflows: |beta c| = {b_abs:.1f} exceeds the logit limit "
                f"{USA_LOGIT_LIMIT:.1f}; {USA_OVERFLOW_FIX}"
            )
        loc = plan_angles(plan)
        frame = plan_frame(plan)
        if normalized:
            sums = self._sa_sums(x, loc, frame, alm, project)
            return self._sa_quotient(x, *sums[:3], *self._sa_errors(total, *sums[3:]))
        from ducc0.sht.experimental import synthesis_general

        grad = self._gradient(x, loc, frame, alm)
        if not project:  # USA: d Phi_s / d b, the radial part of the sums
            alm_r = alm * self._lam_r[self._l_of]
            grad += synthesis_general(alm=alm_r, spin=0, lmax=self.lmax, loc=loc, epsilon=self.epsilon,
                                      nthreads=1)[0][:, None] * x
        with np.errstate(over="ignore", invalid="ignore"):
            out = grad * (self.v * math.exp(exponent))
        if not np.all(np.isfinite(out)):
            raise FieldOverflowError(f"USA attention overflowed double precision; {USA_OVERFLOW_FIX}")
        return out

    def _gradient(self, x, loc, frame, alm) -> np.ndarray:
        """``grad(Phi_s) / b`` (3-vectors, tangent) at the points ``x`` with angles ``loc`` and
        local frames ``frame`` from the moments ``alm`` (shape (1, nalm))."""
        from ducc0.sht.experimental import synthesis_general

        alm_g = alm * self._lam_g[self._l_of]
        # spin-1 "DERIV1": maps (d/dtheta, 1/sin(theta) d/dphi) of the spin-0 synthesis, here
        # of Phi_s / b
        g = synthesis_general(alm=alm_g, spin=1, lmax=self.lmax, loc=loc, epsilon=self.epsilon, nthreads=1,
                              mode="DERIV1")
        ct, st, cp, sp = frame
        gt, gp = g[0], g[1]
        grad = np.empty_like(x)  # grad(Phi_s) / b = gt e_theta + gp e_phi
        grad[:, 0] = gt * ct * cp - gp * sp
        grad[:, 1] = gt * ct * sp + gp * cp
        grad[:, 2] = -gt * st
        return grad

    def _sa_sums(self, x, loc, frame, alm, project):
        """SA: the scaled sums at ``x`` from the moments ``alm`` -- ``Phi_s``, ``grad(Phi_s) / b``
        (``= P_x sum_j w_j k_s(x, y_j) y_j``), ``D_s`` (``project=False``, else ``None``) -- and
        the bounds ``B_Phi``, ``B_g``, ``B_D`` (``B_D = 0`` without ``D_s``) of those functions."""
        from ducc0.sht.experimental import synthesis_general

        L, eps = self.lmax, self.epsilon
        grad = self._gradient(x, loc, frame, alm)
        b_g = float(self._w_g @ self._degree_norms(alm * self._lam_g[self._l_of]))
        alm_d = None if project else alm * self._lam_d[self._l_of]
        alm = alm * self._lam[self._l_of]
        phi_s = synthesis_general(alm=alm, spin=0, lmax=L, loc=loc, epsilon=eps, nthreads=1)[0]
        b_phi = float(self._w_phi @ self._degree_norms(alm))
        d_s, b_d = None, 0.0
        if alm_d is not None:
            d_s = synthesis_general(alm=alm_d, spin=0, lmax=L, loc=loc, epsilon=eps, nthreads=1)[0]
            b_d = float(self._w_phi @ self._degree_norms(alm_d))
        return phi_s, grad, d_s, b_phi, b_g, b_d

    def _sa_errors(self, total, b_phi, b_g, b_d):
        """Absolute error bounds of the transformed ``Phi_s``, ``grad(Phi_s) / b`` and ``D_s`` of a
        measure of total weight ``total`` with the function bounds ``b_phi, b_g, b_d``: the
        transform accuracy ``eta`` times the bound, plus the truncation tail of the mass."""
        return (self.eta * b_phi + total * self._tau_phi, self.eta * b_g + total * self._tau_g,
                self.eta * b_d + total * self._tau_d)

    def _sa_quotient(self, x, phi_s, grad, d_s, e_phi, e_g, e_d):
        """SA: the field ``v grad(Phi_s) / (b Phi_s)`` (tangent; plus the radial part
        ``v sgn(b) (1 - D_s / Phi_s) x`` when ``d_s`` is given) and its estimated error relative
        to ``|v|`` per target from the absolute errors ``e_phi, e_g, e_d`` of the sums (``inf``
        where ``Phi_s <= 10 e_phi``: not resolved)."""
        v, b = self.v, self.b
        resolved = phi_s > 10.0 * e_phi
        safe = np.where(resolved, phi_s, 1.0)
        out = grad * (v / safe)[:, None]
        rho = np.minimum(1.0, np.linalg.norm(out, axis=1) / abs(v))
        err = e_g + rho * e_phi
        if d_s is not None:
            # the radial part <x, average> = sgn(b) (1 - D / Phi) with
            # D = sum_j w_j (1 - sgn(b) <x, y_j>) e^{b <x, y_j>} >= 0, small where the kernel
            # peaks: better conditioned than (d Phi / d b) / Phi, a quotient of nearly equal sums
            ratio = d_s / safe
            out += (v * math.copysign(1.0, b) * (1.0 - ratio))[:, None] * x
            err = err + (e_d + np.minimum(2.0, np.abs(ratio)) * e_phi)
        err = np.where(resolved, err / safe + ABSOLUTE_FLOOR, np.inf)
        return out, err

    # -- the SA split: heavy sources summed directly, the light rest transformed -------------
    def _split_cost(self, n_targets, n_sources):
        return spectral_cost(self.model, n_targets, n_sources, self.tolerance)

    def _split_field(self, plan, F, y, w, light, heavy, w_light, project):
        """The split of :meth:`SphereSpectralField._split
        <meanfield.fields.spectral.SphereSpectralField._split>` here:
        ``(Phi_h + Phi_l, grad_h + grad_l, D_h + D_l)`` with the heavy sums exact and the light
        part transformed (errors ``eta B_l + W_l tau`` with ``B_l <~ W_l``: small against
        ``Phi`` where the whole measure's were not)."""
        from ducc0.sht.experimental import adjoint_synthesis_general

        alm = adjoint_synthesis_general(map=w[light][None, :], spin=0, lmax=self.lmax, loc=point_angles(y[light]),
                                        epsilon=self.epsilon, nthreads=1)
        x = plan.points[F]
        loc = plan_angles(plan)[F]
        frame = tuple(a[F] for a in plan_frame(plan))
        phi_l, grad_l, d_l, *bounds = self._sa_sums(x, loc, frame, alm, project)
        phi_h, grad_h, d_h = self._direct_sums(x, y[heavy], w[heavy], project)
        return self._sa_quotient(x, phi_l + phi_h, grad_l + grad_h, None if project else d_l + d_h,
                                 *self._sa_errors(w_light, *bounds))

    def _direct_sums(self, x, y, w, project):
        """``Phi_s``, ``grad(Phi_s) / b`` and ``D_s`` (``None`` when ``project``) of the measure
        ``(y, w)`` at ``x``, summed directly in the scale ``e^{-|b|}`` of the transforms
        (blocks of about 2^18 pairs). ``D_s = Phi_s - sgn(b) <x, M_s>`` (``M_s = sum_j w_j
        k_s y_j``) loses digits only against ``Phi_s``, which is all the quotient needs."""
        b_abs = abs(self.b)
        by = y * self.b
        wy = np.concatenate([w[:, None], w[:, None] * y], axis=1)
        sums = np.empty((x.shape[0], 4))
        rows = max(1, 2**18 // max(1, y.shape[0]))
        for start in range(0, x.shape[0], rows):
            logits = x[start : start + rows] @ by.T
            logits -= b_abs
            np.exp(logits, out=logits)
            np.matmul(logits, wy, out=sums[start : start + rows])
        phi, m = sums[:, 0], sums[:, 1:]
        radial = np.einsum("ij,ij->i", m, x)
        grad = m - radial[:, None] * x
        return phi, grad, None if project else phi - math.copysign(1.0, self.b) * radial

    def higher_power(self, alm: np.ndarray) -> float:
        """``sum_{l >= 1} lambda_l e^{-|b|} sum_m |a_lm|^2`` of the packed moments ``alm``
        (complex view of :meth:`coefficients`; ``m > 0`` stored once, counted twice): the
        Funk--Hecke series of the pair sum without its ``l = 0`` term
        (:func:`meanfield.fields.energy.energy`)."""
        higher = self._l_of > 0
        return float(np.sum((self._lam[self._l_of] * self._m_mult * np.abs(alm) ** 2)[higher]))

    def _degree_norms(self, alm: np.ndarray) -> np.ndarray:
        """``|a_l| = sqrt(sum_{m=-l}^{l} |a_lm|^2)`` per degree (``m > 0`` stored once, counted twice)."""
        mag = np.abs(alm[0])
        scale = float(mag.max()) if mag.size else 0.0
        if not scale > 0:
            return np.zeros(self.lmax + 1)
        sq = np.bincount(self._l_of, weights=self._m_mult * (mag / scale) ** 2, minlength=self.lmax + 1)
        return scale * np.sqrt(sq)

    # -- causal tokens: prefix sums of the per-token harmonic moments ---------------------
    def causal_tokens(self, x, w, alibi: float = 0.0, project: bool = True, rows=None) -> np.ndarray:
        """The causal field of ordered tokens by prefix sums of their harmonic moments.

        Token ``i`` attends to ``j <= i`` with the weights ``w_j e^{-lambda (i - j) / n}``
        (:mod:`meanfield.fields.causal`). With the real orthonormal harmonics ``Y_p``
        (:func:`~meanfield.fields.spectral_sphere_general.real_harmonics`, ``p = (l, m)``,
        ``l <= lmax``) Funk--Hecke gives the scaled kernel
        ``e^{b <x, y> - |b|} = sum_p lambda_l Y_p(x) Y_p(y)`` (``lambda_l = 4 pi i_l(b) e^{-|b|}``),
        so every token sees the prefix moments of its own past,

        .. math::

            S_i[p, f] = \\sum_{j \\le i} w_j e^{-\\lambda (i - j)/n} Y_p(y_j)\\, u_f(y_j)
                      = e^{-\\lambda/n} S_{i-1}[p, f] + w_i Y_p(y_i) u_f(y_i),
            \\qquad u = (1, y_1, y_2, y_3),

        and ``F_f(i) = sum_p lambda_l Y_p(x_i) S_i[p, f]`` are ``Phi_s(x_i)`` (``f = 0``) and
        ``M_s(x_i) = sum_j w_j e^{b <x_i, y_j> - |b|} y_j`` (``f = 1..3``): the SA field is
        ``v P_x(M_s / Phi_s)``, USA ``v e^{|b| - offset} P_x M_s`` (``project=False``: without
        ``P_x``). ``O(n lmax^2)`` time, ``O(block lmax^2)`` memory, instead of the ``n^2 / 2``
        pairs of :func:`~meanfield.fields.causal.masked_direct`; the prefix runs block by block
        (:class:`~meanfield.fields.spectral_circle.CausalPrefix`). No NUFFT: the harmonics are
        evaluated exactly, the errors are the truncation tail ``tau_Phi`` of ``lmax``
        (:func:`~meanfield.fields.sphere_transforms.spectral_lmax`, per unit mass, for
        ``Phi_s`` and every component of ``M_s``) and the round-off
        ``eps = _CAUSAL_ROUNDOFF (lmax + 1)``, both relative to the prefix weight ``W_i``.
        SA: ``|X - X_exact| <~ 2 |v| W_i (eps + tau_Phi) / Phi_s(x_i)``, so tokens with
        ``Phi_s < 2 (eps + tau_Phi) W_i / tolerance`` (a clustered prompt at large ``|b|``) are
        recomputed by the masked direct sums of those rows only (``last_fallback_count``).
        USA raises :class:`~meanfield.fields.attention.FieldOverflowError` as :meth:`evaluate`.

        Only the isotropic heads have this path; a
        :class:`~meanfield.fields.spectral_sphere_general.GeneralSphereField` head has none,
        and :func:`~meanfield.fields.causal.causal_tokens` gives it the masked direct sums.
        Arguments and result as :meth:`SpectralCircleField.causal_tokens
        <meanfield.fields.spectral_circle.SpectralCircleField.causal_tokens>` (``d = 3``).
        """
        from .causal import _as_tokens, _check_alibi, _rows, masked_direct
        from .spectral_circle import PREFIX_SUB, PREFIX_SUBBLOCKS, CausalPrefix
        from .spectral_sphere_general import real_harmonics

        model = self.model
        x3, w, batch = _as_tokens(model, x, w)
        lam = _check_alibi(alibi)
        B, n, _ = x3.shape
        r = _rows(rows, n)
        self.last_fallback_count = self.last_split_count = 0
        out = np.zeros((B, r.size, 3))
        if r.size == 0 or B == 0 or self._vanishes():
            return out.reshape(batch + (r.size, 3))
        normalized = model.normalized
        b_abs = abs(self.b)
        exponent = b_abs - model.logit_offset  # shifted USA: 0
        if not normalized and exponent > USA_LOGIT_LIMIT:
            raise FieldOverflowError(
                f"USA attention overflows: |beta c| = {b_abs:.1f} exceeds the logit limit "
                f"{USA_LOGIT_LIMIT:.1f}; {USA_OVERFLOW_FIX}"
            )
        L = self.lmax
        if self.b == 0.0:  # the kernel is 1: the prefix of (w, w y) itself
            P, lam_p, tau = 1, np.ones(1), 0.0
        else:
            P = (L + 1) ** 2
            lam_p = self._lam[np.concatenate([self._l_of, self._l_of[L + 1 :]])]  # layout order
            tau = self._tau_phi
        z_min = 2.0 * (_CAUSAL_ROUNDOFF * (L + 1) + tau) / self.tolerance
        end = int(r[-1]) + 1
        per_token = 4 * P
        pb = max(1, min(B, _CAUSAL_ELEMENTS // (per_token * PREFIX_SUB)))
        nb = PREFIX_SUB * max(1, min(PREFIX_SUBBLOCKS, _CAUSAL_ELEMENTS // (per_token * pb * PREFIX_SUB)))
        low = np.zeros((B, r.size), dtype=bool)
        for b0 in range(0, B, pb):
            b1 = min(B, b0 + pb)
            nbat = b1 - b0
            prefix = CausalPrefix(P * 4 * nbat, lam / n, dtype=float)
            for t0 in range(0, end, nb):
                t1 = min(end, t0 + nb)
                m = t1 - t0
                y = x3[b0:b1, t0:t1].reshape(-1, 3)
                H = real_harmonics(y, L) if P > 1 else np.ones((1, y.shape[0]))
                u = np.empty((4, nbat, m))
                u[0] = w[t0:t1]
                u[1:] = np.moveaxis(x3[b0:b1, t0:t1], -1, 0) * w[t0:t1]
                values = H.reshape(P, 1, nbat, m) * u[None]
                S = prefix(values.reshape(P * 4 * nbat, m)).reshape(P, 4, nbat, m)
                lo, hi = np.searchsorted(r, [t0, t1])
                if lo == hi:
                    continue
                idx = r[lo:hi] - t0
                if idx.size == m:  # every token of the block: no copies
                    idx = slice(None)
                Ht = H.reshape(P, nbat, m)[:, :, idx] * lam_p[:, None, None]
                F = np.einsum("pbi,pfbi->fbi", Ht, S[:, :, :, idx])  # Phi_s, M_s
                if normalized:
                    total = S[0, 0][:, idx] * (1.0 if P == 1 else math.sqrt(4.0 * math.pi))  # Y_00 = 1 / sqrt(4 pi)
                    bad = ~(F[0] >= z_min * total)  # also NaN and an empty prefix
                    vals = F[1:] * (self.v / np.where(bad, 1.0, F[0]))
                    low[b0:b1, lo:hi] = bad
                else:
                    with np.errstate(over="ignore", invalid="ignore"):
                        vals = F[1:] * (self.v * math.exp(exponent))
                out[b0:b1, lo:hi] = np.moveaxis(vals, 0, -1)
        xr = x3[:, r]
        if normalized and low.any():
            for b in np.flatnonzero(low.any(axis=1)):
                out[b, low[b]] = masked_direct(model, x3[b], w, lam, project=False, rows=r[low[b]])
            self.last_fallback_count = int(np.count_nonzero(low))
        if not normalized and not np.all(np.isfinite(out)):
            raise FieldOverflowError(f"USA attention overflowed double precision; {USA_OVERFLOW_FIX}")
        if project:
            out -= np.einsum("bij,bij->bi", out, xr)[..., None] * xr
        return out.reshape(batch + (r.size, 3))
