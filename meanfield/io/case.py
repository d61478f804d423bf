"""Case files: TOML tables, validated key by key, with every default filled in.

A case is a nested dict ``{section: {key: value}}``. :data:`SCHEMA` lists every key with
its default and meaning (``docs/case-reference.md`` is generated from the same table);
unknown keys, wrong types and out-of-range values raise :class:`CaseError`, whose message
names the file, the dotted key and the reason.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["CaseError", "SCHEMA", "load_case", "resolve_case", "parse_override", "dump_case", "show_value"]


class CaseError(ValueError):
    """Invalid input: ``source`` (a file or ``--set``), the dotted ``key`` and ``reason``."""

    def __init__(self, source: str, key: str, reason: str):
        self.source, self.key, self.reason = str(source), key, reason
        super().__init__(f"{self.source}: {key}: {reason}" if key else f"{self.source}: {reason}")


# -- value checkers: (value, d) -> normalized value, raising ValueError(reason) ------------------
def _type_name(v) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}.get(
        type(v), type(v).__name__
    )


def show_value(v, limit: int = 60) -> str:
    """``repr(v)``, shortened for messages (a TOML integer may have thousands of digits)."""
    try:
        text = repr(v)
    except ValueError:  # int too large for str()
        return f"<integer of about {int(v.bit_length() * 0.30103)} digits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(v, what="a number") -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"must be {what}, got {_type_name(v)} {show_value(v)}")
    try:
        return float(v)
    except OverflowError:  # a TOML integer beyond the float range
        raise ValueError(f"must be a finite number, got {show_value(v)}") from None


def real(lo=-math.inf, hi=math.inf, lo_open=False, allow_inf=False) -> Callable:
    def check(v, d=None):
        x = _number(v)
        if math.isnan(x) or (math.isinf(x) and not allow_inf):
            raise ValueError(f"must be a finite number, got {show_value(v)}")
        if x < lo or (lo_open and x == lo):
            raise ValueError(f"must be {'>' if lo_open else '>='} {lo:g}, got {show_value(v)}")
        if x > hi:
            raise ValueError(f"must be <= {hi:g}, got {show_value(v)}")
        return x

    return check


def integer(lo=None, hi=None) -> Callable:
    def check(v, d=None):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"must be an integer, got {_type_name(v)} {show_value(v)}")
        if lo is not None and v < lo:
            raise ValueError(f"must be >= {lo}, got {show_value(v)}")
        if hi is not None and v > hi:
            raise ValueError(f"must be <= {hi}, got {show_value(v)}")
        return v

    return check


def choice(*options) -> Callable:
    def check(v, d=None):
        if v not in options:
            raise ValueError(f"must be one of {', '.join(repr(o) for o in options)}, got {show_value(v)}")
        return v

    return check


def boolean(v, d=None):
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {_type_name(v)} {show_value(v)}")
    return v


def string(v, d=None):
    if not isinstance(v, str):
        raise ValueError(f"must be a string, got {_type_name(v)} {show_value(v)}")
    return v


def matrix(v, d):
    if v is None:
        return np.eye(d).tolist()
    if not (isinstance(v, list) and len(v) == d and all(isinstance(row, list) and len(row) == d for row in v)):
        if isinstance(v, list) and all(isinstance(row, list) for row in v) and len({len(r) for r in v}) == 1:
            got = f"shape ({len(v)}, {len(v[0])})"
        elif isinstance(v, list) and not any(isinstance(row, list) for row in v):
            got = f"shape ({len(v)},)"
        else:
            got = f"{_type_name(v)} {show_value(v)}"
        raise ValueError(f"must be a {d} x {d} array of numbers, got {got}")
    return _float_rows(v)


def _float_rows(v: list) -> list:
    """The rows of a 2-d array as lists of finite floats (``ValueError`` naming the row)."""
    out = []
    for i, row in enumerate(v):
        try:
            out.append([_number(x) for x in row])
        except ValueError as exc:  # strings, booleans, integers beyond the float range
            raise ValueError(f"row {i}: entries {exc}") from None
    if not all(math.isfinite(x) for row in out for x in row):
        raise ValueError("must have finite entries")
    return out


def vectors(v, d):
    if not isinstance(v, list):
        raise ValueError(f"must be an array of {d}-vectors, got {_type_name(v)}")
    out = []
    for i, row in enumerate(v):
        if not isinstance(row, list) or len(row) != d:
            raise ValueError(f"entry {i} must be a vector of length {d}, got {show_value(row)}")
        try:
            vec = [_number(x, "a number") for x in row]
        except ValueError as exc:
            raise ValueError(f"entry {i}: {exc}") from None
        if not all(math.isfinite(x) for x in vec) or not any(vec):
            raise ValueError(f"entry {i} must be a finite nonzero vector, got {show_value(row)}")
        out.append(vec)
    return out


def reals(lo=0.0) -> Callable:
    def check(v, d=None):
        if not isinstance(v, list):
            raise ValueError(f"must be an array of numbers, got {_type_name(v)}")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(_number(x))
            except ValueError as exc:
                raise ValueError(f"entry {i}: {exc}") from None
            if not math.isfinite(out[-1]) or out[-1] < lo:
                raise ValueError(f"entry {i} must be a finite number >= {lo:g}, got {show_value(x)}")
        return out

    return check


def modes(v, d):
    """``initial.modes``: circle ``{k, amplitude, phase}``; sphere (d = 3) ``{l, m, amplitude}``;
    ``d = ("zonal", D)`` (the zonal PDE, or particles on S^{D-1}, D != 3) ``{l, amplitude}``: the
    Gegenbauer mode ``C_l^{((D-2)/2)}(x_1)``."""
    if isinstance(d, tuple):
        return _zonal_modes(v, d[1])
    if not isinstance(v, list) or not all(isinstance(m, dict) for m in v):
        raise ValueError("must be an array of tables, e.g. [{k = 4, amplitude = 0.01}]")
    allowed = {"k", "amplitude", "phase"} if d == 2 else {"l", "m", "amplitude"}
    out = []
    for i, m in enumerate(v):
        extra = set(m) - allowed
        if extra:
            raise ValueError(f"entry {i}: unknown field {sorted(extra)[0]!r} (allowed: {', '.join(sorted(allowed))})")
        missing = [f for f in (("k", "amplitude") if d == 2 else ("l", "amplitude")) if f not in m]
        if missing:
            raise ValueError(f"entry {i}: missing field {missing[0]!r}")
        try:
            amp = _number(m.get("amplitude", None), "a number")
            if d == 2:
                k = integer(1)(m.get("k"))
                out.append({"k": k, "amplitude": amp, "phase": _number(m.get("phase", 0.0))})
            else:
                l = integer(0)(m.get("l"))
                mm = integer(-l, l)(m.get("m", 0))
                out.append({"l": l, "m": mm, "amplitude": amp})
        except ValueError as exc:
            raise ValueError(f"entry {i}: {exc}") from None
    return out


def _zonal_modes(v, d: int) -> list:
    if not isinstance(v, list) or not all(isinstance(m, dict) for m in v):
        raise ValueError("must be an array of tables, e.g. [{l = 2, amplitude = 0.1}]")
    out = []
    for i, m in enumerate(v):
        extra = set(m) - {"l", "amplitude"}
        if extra:
            raise ValueError(f"entry {i}: unknown field {sorted(extra)[0]!r}: the zonal modes on S^{d - 1} are "
                             f"{{l, amplitude}}, the Gegenbauer polynomial C_l^(({d}-2)/2)(x_1) (no order m: they "
                             "are the harmonics symmetric about e_1)")
        for f in ("l", "amplitude"):
            if f not in m:
                raise ValueError(f"entry {i}: missing field {f!r}")
        try:
            out.append({"l": integer(0)(m["l"]), "amplitude": _number(m["amplitude"], "a number")})
        except ValueError as exc:
            raise ValueError(f"entry {i}: {exc}") from None
    return out


def dt_value(v, d=None):
    if v == "auto":
        return v
    try:
        return real(0.0, lo_open=True)(v)
    except ValueError:
        raise ValueError(f"must be \"auto\" or a number > 0, got {show_value(v)}") from None


def counts(v, d=None):
    if not isinstance(v, list) or not v:
        raise ValueError(f"must be a nonempty array of particle numbers, got {_type_name(v)}")
    return [integer(1, 10**8)(x) for x in v]


def seed_list(v, d=None):
    if isinstance(v, list):
        if not v:
            raise ValueError("must not be empty")
        return [integer(0)(x) for x in v]
    return integer(1, 10**4)(v)


def _table(v, allowed: dict, what: str) -> dict:
    """A table whose fields are checked by ``allowed`` (``{field: check}``); unknown fields
    are errors naming the allowed ones."""
    if not isinstance(v, dict):
        raise ValueError(f"must be a table ({what}), got {_type_name(v)} {show_value(v)}")
    extra = sorted(set(v) - set(allowed))
    if extra:
        raise ValueError(f"unknown field {extra[0]!r} (allowed: {', '.join(allowed)})")
    out = {}
    for name, check in allowed.items():
        if name in v:
            try:
                out[name] = check(v[name])
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
    return out


def _rect(v, rows: int | None, cols: int | None, name: str) -> list:
    """A rectangular array of finite numbers with the given shape (``None``: any)."""
    if not (isinstance(v, list) and v and all(isinstance(r, list) for r in v) and len({len(r) for r in v}) == 1):
        raise ValueError(f"must be a rectangular 2-d array of numbers, got {_type_name(v)} {show_value(v)}")
    shape = (len(v), len(v[0]))
    if (rows is not None and shape[0] != rows) or (cols is not None and shape[1] != cols) or shape[1] == 0:
        want = f"{rows if rows is not None else 'm'} x {cols if cols is not None else 'm'}"
        raise ValueError(f"must be a {want} array ({name}), got shape {shape}")
    return _float_rows(v)


#: The activations of ``model.perceptron`` (:data:`meanfield.dynamics.perceptron.ACTIVATIONS`).
ACTIVATION_NAMES = ("relu", "gelu", "tanh", "sigmoid", "identity")


def _head_fields(d: int) -> dict:
    return {"kind": choice("SA", "USA"), "beta": real(0.0), "Q": lambda v: matrix(v, d), "K": lambda v: matrix(v, d),
            "V": lambda v: matrix(v, d), "weight": real(), "shift": boolean}


def _one_head(v, d) -> dict:
    got = _table(v, _head_fields(d), "{kind, beta, Q, K, V, weight, shift}")
    eye = np.eye(d).tolist()
    return {"kind": got.get("kind", "SA"), "beta": got.get("beta", 1.0), "Q": got.get("Q", eye),
            "K": got.get("K", eye), "V": got.get("V", eye), "weight": got.get("weight", 1.0),
            **({"shift": got["shift"]} if "shift" in got else {})}


def heads(v, d) -> list:
    """``model.heads``: an array of tables ``{kind, beta, Q, K, V, weight, shift}`` (defaults
    ``"SA"``, 1, identity, weight 1, shift = ``model.shift``)."""
    if not isinstance(v, list) or not all(isinstance(h, dict) for h in v):
        raise ValueError("must be an array of tables, e.g. [{kind = \"SA\", beta = 9}, {beta = 1, weight = -0.5}]")
    out = []
    for i, h in enumerate(v):
        try:
            out.append(_one_head(h, d))
        except ValueError as exc:
            raise ValueError(f"head {i}: {exc}") from None
    return out


def perceptron(v, d) -> dict:
    """``model.perceptron``: ``{W (d x m), U (m x d), b (m), activation}``."""
    if not isinstance(v, dict):
        raise ValueError(f"must be a table {{W, U, b, activation}}, got {_type_name(v)} {show_value(v)}")
    got = _table(v, {"W": lambda x: x, "U": lambda x: x, "b": lambda x: x, "activation": choice(*ACTIVATION_NAMES)},
                 "{W, U, b, activation}")
    for name in ("W", "U"):
        if name not in got:
            raise ValueError(f"missing field {name!r} (W is d x m, U is m x d)")
    try:
        W = _rect(got["W"], d, None, f"d x m with d = {d}")
    except ValueError as exc:
        raise ValueError(f"W: {exc}") from None
    m = len(W[0])
    try:
        U = _rect(got["U"], m, d, f"m x d: W is {d} x {m}, so U must be {m} x {d}")
    except ValueError as exc:
        raise ValueError(f"U: {exc}") from None
    b = got.get("b", [0.0] * m)
    try:
        b = reals(-math.inf)(b)
    except ValueError as exc:
        raise ValueError(f"b: {exc}") from None
    if len(b) != m:
        raise ValueError(f"b: must have m = {m} entries (W is {d} x {m}), got {len(b)}")
    return {"W": W, "U": U, "b": b, "activation": got.get("activation", "relu")}


def schedule(v, d) -> list:
    """``model.schedule``: an array of tables ``{t, heads, perceptron}``, increasing ``t``."""
    if not isinstance(v, list) or not all(isinstance(e, dict) for e in v):
        raise ValueError("must be an array of tables {t, heads, perceptron}")
    out, last = [], -math.inf
    for i, e in enumerate(v):
        try:
            got = _table(e, {"t": real(0.0), "heads": lambda x: heads(x, d), "perceptron": lambda x: perceptron(x, d)},
                         "{t, heads, perceptron}")
            if "t" not in got:
                raise ValueError("missing field 't' (the time from which these terms act)")
            if not got["t"] > last:
                raise ValueError(f"t = {got['t']:g} must be larger than the previous entry's t = {last:g} "
                                 "(the times must increase)")
        except ValueError as exc:
            raise ValueError(f"entry {i}: {exc}") from None
        last = got["t"]
        out.append({"t": got["t"], "heads": got.get("heads", []), **({"perceptron": got["perceptron"]}
                                                                     if "perceptron" in got else {})})
    return out


def random_heads(v, d) -> dict:
    """``model.random_heads``: ``{count, interval, seed, kind, beta, Q_std, K_std, V_std}``."""
    fields = {"count": integer(1, 4096), "interval": real(0.0, lo_open=True), "seed": integer(0),
              "kind": choice("SA", "USA"), "beta": real(0.0), "Q_std": real(0.0), "K_std": real(0.0),
              "V_std": real(0.0)}
    got = _table(v, fields, "{count, interval, seed, kind, beta, Q_std, K_std, V_std}")
    for name in ("count", "interval"):
        if name not in got:
            raise ValueError(f"missing field {name!r}")
    std = 1.0 / math.sqrt(d)
    return {"count": got["count"], "interval": got["interval"], "seed": got.get("seed", 0),
            "kind": got.get("kind", "SA"), "beta": got.get("beta", 1.0), "Q_std": got.get("Q_std", std),
            "K_std": got.get("K_std", std), "V_std": got.get("V_std", std)}


@dataclass(frozen=True)
class Key:
    check: Callable
    default: Any
    doc: str


SCHEMA: dict[str, dict[str, Key]] = {
    "domain": {
        "manifold": Key(choice("circle", "sphere", "zonal"), "circle", "`\"circle\"` (S^1), `\"sphere\"` (S^2; "
                        "particles on S^{d-1} with `domain.d`) or `\"zonal\"` (the PDE of densities on S^{d-1} "
                        "symmetric about e_1, in the polar angle: `domain.d`, `domain.cells` bands)."),
        "d": Key(integer(2, 100_000), None, "ambient dimension: 2 for the circle; `\"sphere\"` 3 (default; any d >= 2 "
                 "for particles, the PDE on meshes needs 3) and `\"zonal\"` any d >= 3 (default 3)."),
        "cells": Key(integer(3, 10**8), 512, "circle: number of uniform cells; zonal: number of uniform bands of the "
                     "polar angle in [0, pi]."),
        "mesh": Key(string, "icosahedral:4", "sphere: `\"icosahedral:LEVEL\"` (level L has 20 * 4^L triangles) or a "
                    "surface mesh file (.vtk .vtu .vtp .stl .obj .ply), path relative to the case file."),
        "edge_points": Key(integer(1, 5), 1, "sphere: Gauss points per edge for the fluxes (1: midpoint rule)."),
        "positions": Key(integer(1, 100_000), None, "causal PDE (`model.mask = \"causal\"`): number of position "
                         "cells (bands) of the prompt position s in [0, 1]; the density lives on bands x manifold cells. "
                         "Required by `meanfield run` of a causal case; particle runs place token i at s = i/n and bin "
                         "the tokens into these bands for the per-position diagnostics (default 8 there)."),
    },
    "model": {
        "kind": Key(choice("SA", "USA"), "SA", "`\"SA\"` softmax attention or `\"USA\"` unnormalized attention."),
        "beta": Key(real(0.0), 1.0, "inverse temperature, >= 0 (0: consensus/Kuramoto model)."),
        "Q": Key(matrix, None, "query matrix, d x d (default identity)."),
        "K": Key(matrix, None, "key matrix, d x d (default identity)."),
        "V": Key(matrix, None, "value matrix, d x d (default identity)."),
        "shift": Key(boolean, False, "USA: use the shifted kernel `exp(beta (<Qx, Ky> - c))`, c = ||Q^T K||_2 (a "
                     "constant rescaling of time by `exp(-beta c)`, the convention of the metastability paper's code); "
                     "makes large beta computable. No effect on SA. The default of every head's `shift`."),
        "heads": Key(heads, None, "several attention heads, `[{kind, beta, Q, K, V, weight, shift}, ...]` (defaults "
                     "`\"SA\"`, 1, identity, weight 1, `model.shift`); the field is `sum_h weight_h X_h`, a negative "
                     "weight repels. Replaces the one-head keys `kind, beta, Q, K, V` (giving both is an error); "
                     "`heads = []`: no attention (e.g. a perceptron alone). Not given: the one head of the one-head keys."),
        "perceptron": Key(perceptron, None, "a perceptron term `P_x(W sigma(U x + b))`: `{W (d x m), U (m x d), b (m, "
                          "default 0), activation}` with activation `\"relu\"` (default), `\"gelu\"`, `\"tanh\"`, "
                          "`\"sigmoid\"` or `\"identity\"`; added to the attention field."),
        "schedule": Key(schedule, [], "piecewise constant parameters: `[{t, heads, perceptron}, ...]` with increasing "
                        "`t` <= `solver.t_end`; from each `t` on (to the next entry) the entry's heads and perceptron "
                        "(none where left out) replace the model's terms. Steps land exactly on the switch times."),
        "random_heads": Key(random_heads, None, "heads drawn at random every layer (the homogenized Transformer): "
                            "`{count, interval, seed (0), kind (\"SA\"), beta (1), Q_std, K_std, V_std (1/sqrt(d))}`; "
                            "`count` heads with iid N(0, std^2) entries of Q, K, V, redrawn for every interval "
                            "`[k interval, (k+1) interval)` from the seed and k, the field their mean; replaces the "
                            "heads (one-head keys, `heads`, `schedule`); a `perceptron` is added."),
        "noise": Key(real(0.0), 0.0, "noise strength sigma >= 0: particles dx = X dt + sigma dB (B a Brownian motion "
                     "on the sphere), the PDE d/dt rho + div(rho X) = (sigma^2/2) Lap rho; 0: none."),
        "mask": Key(choice("none", "causal"), "none", "`\"causal\"`: the token at position s attends only to "
                    "positions s' <= s (particles: token i to tokens j <= i, in the order of the sample or of "
                    "`initial.points`; the PDE: a density on [0, 1] x the manifold, `domain.positions` bands), every "
                    "head masked; `\"none\"`: full attention."),
        "alibi": Key(real(0.0), 0.0, "ALiBi slope lambda >= 0 of a causal model: the bias -lambda (s - s') added to "
                     "every logit (particles: -lambda (i - j) / n); 0: none."),
    },
    "initial": {
        "kind": Key(choice("uniform", "modes", "vmf", "python", "points"), "uniform", "initial density kind."),
        "modes": Key(modes, [], "`modes`: circle `{k, amplitude, phase}` (mode cos(k theta - phase)); "
                     "sphere `{l, m, amplitude}` (real orthonormal Y_lm)."),
        "centers": Key(vectors, [], "`vmf`: unit centres c_j (normalized if not unit)."),
        "kappas": Key(reals(0.0), [], "`vmf`: concentrations kappa_j >= 0, one per centre."),
        "weights": Key(reals(0.0), [], "`vmf`: coefficients w_j (default 1); `points`: particle weights (default 1/n)."),
        "points": Key(vectors, [], "`points`: positions (n, d), normalized onto the sphere."),
        "function": Key(string, "", "`python`: `\"path/file.py:name\"` (relative to the case file) or "
                        "`\"package.module:name\"`, a callable points (n, d) -> densities (n,); in a causal case "
                        "(`model.mask = \"causal\"`) a callable (s, x) -> densities (n,) of the position s (n,) "
                        "in [0, 1] and the points x (n, d), each position's density normalized to mass 1."),
        "quadrature_degree": Key(integer(1, 30), 8, "degree of the quadrature rule projecting the density onto cells."),
    },
    "solver": {
        "scheme": Key(choice("upwind", "muscl", "spectral"), "muscl", "finite-volume scheme, or `\"spectral\"`: "
                      "the Fourier pseudo-spectral scheme (circle, isotropic models; not positivity preserving)."),
        "backend": Key(choice("direct", "spectral", "auto"), "auto", "nonlocal convolution backend: exact sums, "
                       "Fourier / spherical-harmonic expansion, or the cheaper of the two for the problem size."),
        "tolerance": Key(real(1e-15, 1e-2), 1e-10, "relative accuracy of the spectral backend."),
        "t_end": Key(real(0.0, lo_open=True), 10.0, "final time."),
        "cfl": Key(real(0.0, 1.0, lo_open=True), 0.4, "transport CFL number of each forward-Euler stage (positivity "
                   "guaranteed <= 0.5 for muscl, <= 1 for upwind); the step is `cfl` times the SSP coefficient of "
                   "`time_integrator` times the CFL bound."),
        "time_integrator": Key(choice("ssprk3", "ssprk43", "ssprk2", "euler", "implicit"), "ssprk3", "PDE (finite "
                               "volumes): SSP Runge--Kutta scheme. `\"ssprk3\"` (3 stages, SSP coefficient 1), "
                               "`\"ssprk43\"` (4 stages, third order, coefficient 2: steps twice as long for 4/3 the "
                               "work), `\"ssprk2\"`, `\"euler\"`; or `\"implicit\"`: linearly implicit steps chosen by "
                               "an error estimate, not by the CFL bound (long times, metastability; `solver.scheme = "
                               "\"muscl\"` with its limited face values frozen over each step, or `\"upwind\"`; "
                               "serial; docs/long_times.md)."),
        "step_rtol": Key(real(0.0, 1.0, lo_open=True), 1e-3, "`time_integrator = \"implicit\"`: relative error per "
                         "step (of the cell masses)."),
        "step_atol": Key(real(0.0, 1.0, lo_open=True), 1e-6, "`time_integrator = \"implicit\"`: absolute error per "
                         "step (of the cell masses)."),
        "rate_cfl": Key(real(0.0, 1.0, lo_open=True), 0.1, "step bound dt <= rate_cfl / sigma_max, sigma_max the interaction rate."),
        "dt": Key(dt_value, "auto", "particles: fixed step (`rk4`, `euler`, `euler_tangent`), or `\"auto\"` (the "
                  "automatic rule; the only value for the error-controlled `dopri5` and `bs32`, whose first trial step "
                  "it gives)."),
        "dt_max": Key(real(0.0, lo_open=True, allow_inf=True), math.inf, "cap on adaptive steps (inf: no cap)."),
        "integrator": Key(choice("dopri5", "bs32", "rk4", "euler", "euler_tangent"), "dopri5",
                          "particles: `\"dopri5\"` (Dormand--Prince 5(4), error controlled by `rtol`/`atol`), "
                          "`\"bs32\"` (Bogacki--Shampine 3(2), error controlled), `\"rk4\"` (fixed or automatic "
                          "step `dt`), `\"euler\"` (the authors' scheme: `x + dt A(x)` with the unprojected attention "
                          "average, then renormalized) or `\"euler_tangent\"` (Euler with the projected field, then "
                          "renormalized)."),
        "rtol": Key(real(0.0, 1.0, lo_open=True), 1e-8, "particles, error-controlled integrators: relative tolerance "
                    "per step (solve_ivp convention)."),
        "atol": Key(real(0.0, 1.0, lo_open=True), 1e-10, "particles, error-controlled integrators: absolute "
                    "tolerance per step (solve_ivp convention)."),
        "max_steps": Key(integer(1), 1_000_000, "a run whose step count (done plus predicted from the current step) "
                         "exceeds this stops: refused before it starts (exit 2) or ended with a reason (exit 1)."),
    },
    "output": {
        "every": Key(real(0.0, lo_open=True), None, "time between snapshots (default t_end / 20; not with "
                     "`output.per_decade`)."),
        "per_decade": Key(integer(1, 1000), None, "snapshots spaced geometrically instead, this many per factor 10 "
                          "in t: at 0, `output.first` 10^(k / per_decade) (k = 0, 1, ...) and t_end, for long "
                          "metastable runs (docs/long_times.md). Not with `output.every`."),
        "first": Key(real(0.0, lo_open=True), None, "`output.per_decade`: the first positive output time (default "
                     "min(0.01, t_end / 10); below t_end)."),
        "plots": Key(boolean, True, "write PNG pictures at the end of the run."),
        "movie": Key(boolean, False, "write `movie.gif` at the end of the run: one frame per snapshot (the density "
                     "profile, the causal (s, theta) map, the sphere's equal-area map, or the tokens; "
                     "meanfield/io/movie.py)."),
    },
    "particles": {
        "n": Key(integer(1, 10**8), 1000, "`meanfield particles`: number of particles (`--n` overrides)."),
        "seed": Key(integer(0), 0, "`meanfield particles`: seed of the sample (`--seed` overrides)."),
        "batch": Key(integer(1, 10**9), 1, "`meanfield particles`: number B of independent prompts of n tokens run "
                     "together (prompt b sampled with the seed [seed, b]; one vectorized evaluation); snapshots hold "
                     "`points` (B, n, d), `diagnostics.csv` the mean and quantiles over the prompts (docs/batch.md). "
                     "1: one prompt, the usual particle run."),
    },
    "compare": {
        "particles": Key(counts, [256, 1024, 4096], "`meanfield compare`: particle numbers (`--particles N1,N2,...`)."),
        "seeds": Key(seed_list, 4, "`meanfield compare`: number of seeds S (seeds 0..S-1) or an array of seeds (`--seeds`)."),
        "metric": Key(choice("w1", "w2", "sinkhorn", "sliced", "mmd", "tv"), "w1",
                      "`meanfield compare`: distance (`--metric`), see docs/particles.md."),
    },
    "diagnostics": {
        "cluster_contrast": Key(real(1.0, lo_open=True), 2.0, "a cluster is a connected region where rho exceeds contrast "
                                "times the uniform density (particles: a group heavier than contrast times the uniform "
                                "mass of a ball of diameter cluster_distance)."),
        "cluster_mass": Key(real(0.0, 1.0), 0.01, "smallest mass of a cluster (PDE and particles; 0: particles count "
                            "every group, as the authors' Gram-rank count does)."),
        "target_points": Key(vectors, [], "a target measure `sum_j w_j delta_{y_j}` (unit vectors y_j, normalized if "
                             "not unit): each snapshot's W1 distance to it (exact optimal transport, geodesic, radians) "
                             "goes to the column `w1_target` and the end of the run prints it (the measure-to-measure "
                             "cases)."),
        "target_weights": Key(reals(0.0), [], "weights w_j of `target_points` (default equal; normalized to 1)."),
        "track_radius": Key(real(0.0, math.pi, lo_open=True), 0.5 * math.pi, "`clusters.csv`: the largest angle "
                            "(radians) a cluster moves between two snapshots, and between a merger's parents and the "
                            "merged cluster (equal masses at gap Delta: Delta / 2); a wider merger is a vanish "
                            "(meanfield/clusters.py). Raise it when snapshots are far apart in a late merger."),
        "cluster_distance": Key(real(0.0, math.pi, lo_open=True), math.acos(0.999), "particles: a cluster is a group "
                                "of tokens of angular diameter at most this (radians; default arccos(0.999) = 0.0447, "
                                "the authors' threshold <x_i, x_j> >= 0.999), see docs/particles.md."),
    },
}

_DIM = {"circle": 2, "sphere": 3, "zonal": 3}  # the default dimension of each manifold


def _dimension(manifold: str, given, source) -> int:
    """``domain.d``, checked against the manifold: 2 on the circle, >= 3 for the zonal PDE."""
    if given is None:
        return _DIM[manifold]
    try:
        d = integer(2, 100_000)(given)
    except ValueError as exc:
        raise CaseError(source, "domain.d", str(exc)) from None
    if manifold == "circle" and d != 2:
        raise CaseError(source, "domain.d", f"the circle is S^1 in R^2 (d = 2), got d = {d}; for tokens on S^{d - 1} "
                        "use domain.manifold = \"sphere\"")
    if manifold == "zonal" and d < 3:
        raise CaseError(source, "domain.d", f"a zonal density on S^{{d-1}} needs d >= 3 (S^1 has no zonal reduction: "
                        f"use domain.manifold = \"circle\"), got d = {d}")
    return d
#: t_end / every above this is refused (one file per snapshot; a typo like every = 1e-9
#: would otherwise try to build billions of output times).
MAX_SNAPSHOTS = 100_000


def parse_override(text: str) -> tuple[str, Any]:
    """``"section.key=VALUE"`` -> ``("section.key", value)``; VALUE is read as a TOML value
    (``4``, ``2.5``, ``true``, ``[[1,0],[0,1]]``, ``"SA"``) or else taken as a bare string."""
    if "=" not in text:
        raise CaseError("--set", text, "expected KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise CaseError("--set", text, "expected KEY=VALUE, the key is empty")
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except ValueError:  # TOMLDecodeError, or an integer of more than 4300 digits
        parsed = None
    # "4\nfoo = 1" parses as two entries: not one value, so it is taken as a string.
    value = parsed["v"] if parsed is not None and list(parsed) == ["v"] else raw.strip()
    return key, value


def load_case(path, overrides: list[str] | tuple = ()) -> dict:
    """Read, override (``--set`` strings) and resolve a case file. Raises :class:`CaseError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CaseError(path, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseError(path, "", f"cannot read: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer of more than 4300 digits
        raise CaseError(path, "", f"malformed TOML: {exc}") from None
    overridden = set()
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in SCHEMA or parts[1] not in SCHEMA[parts[0]]:
            raise CaseError("--set", key, f"unknown key (known: {', '.join(_all_keys())})")
        raw.setdefault(parts[0], {})
        if not isinstance(raw[parts[0]], dict):
            raise CaseError(path, parts[0], f"must be a table, got {_type_name(raw[parts[0]])}")
        raw[parts[0]][parts[1]] = value
        overridden.add(key)
    return resolve_case(raw, source=path, base_dir=path.parent, overridden=overridden)


def _all_keys():
    return [f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys]


def resolve_case(raw: dict, source="<case>", base_dir=".", overridden=frozenset()) -> dict:
    """Validate a raw case dict and return it with every default filled in.

    ``initial.function`` is resolved to an absolute path (or module reference) and the
    loaded callable is stored under the private key ``initial["function_object"]``.
    ``overridden`` holds the dotted keys whose values came from ``--set``: errors about
    them name ``--set`` instead of ``source``.
    """
    try:
        return _resolve(raw, source, base_dir)
    except CaseError as exc:
        if exc.source == str(source) and exc.key in overridden:
            raise CaseError("--set", exc.key, exc.reason) from None
        raise


def _resolve(raw: dict, source, base_dir) -> dict:
    raw = copy.deepcopy(raw)
    for section, table in raw.items():
        if section not in SCHEMA:
            raise CaseError(source, section, f"unknown section (known: {', '.join(SCHEMA)})")
        if not isinstance(table, dict):
            raise CaseError(source, section, f"must be a table, got {_type_name(table)}")
        for key in table:
            if key not in SCHEMA[section]:
                raise CaseError(source, f"{section}.{key}", f"unknown key (known in [{section}]: {', '.join(SCHEMA[section])})")
    case: dict = {}
    manifold = raw.get("domain", {}).get("manifold", SCHEMA["domain"]["manifold"].default)
    try:
        manifold = choice(*_DIM)(manifold)
    except ValueError as exc:
        raise CaseError(source, "domain.manifold", str(exc)) from None
    d = _dimension(manifold, raw.get("domain", {}).get("d"), source)
    # the zonal modes {l, amplitude}: the zonal PDE, and particles on S^{d-1} for d != 3
    mode_d = ("zonal", d) if manifold == "zonal" or (manifold == "sphere" and d != 3) else d
    for section, keys in SCHEMA.items():
        case[section] = {}
        for key, spec in keys.items():
            given = raw.get(section, {})
            value = given.get(key, spec.default)
            if (section, key) == ("domain", "d"):
                case[section][key] = d
                continue
            if value is None and (spec.check is not matrix or key in given):
                case[section][key] = None
                continue
            try:
                case[section][key] = spec.check(value, mode_d if spec.check is modes else d)
            except ValueError as exc:
                raise CaseError(source, f"{section}.{key}", str(exc)) from None
    _check_output(case["output"], case["solver"]["t_end"], source)
    _check_model(case, raw.get("model", {}), source)
    _check_target(case["diagnostics"], source)
    _check_initial(case["initial"], d, source, Path(base_dir))
    _check_causal(case, raw, source)
    _check_mesh(case["domain"], source, Path(base_dir), raw.get("domain", {}))
    return case


#: The keys of ``[model]`` that describe its one head (``model.heads`` replaces them).
ONE_HEAD_KEYS = ("kind", "beta", "Q", "K", "V")


def _check_model(case: dict, given: dict, source) -> None:
    """The model's keys together: ``heads`` or ``random_heads`` instead of the one-head keys,
    schedule times within ``solver.t_end``; each head's ``shift`` defaults to ``model.shift``."""
    m = case["model"]
    given = {k: v for k, v in given.items() if v is not None}  # (a resolved case re-read: None is not given)
    one_head = [k for k in ONE_HEAD_KEYS if k in given]
    for key, what in (("heads", "model.heads"), ("random_heads", "model.random_heads")):
        if key in given and one_head:
            raise CaseError(source, f"model.{one_head[0]}", f"cannot be given together with {what}, which replaces "
                            f"the one-head keys ({', '.join('model.' + k for k in ONE_HEAD_KEYS)}); put it in {what}")
    if "random_heads" in given:
        for key in ("heads", "schedule"):
            if key in given:
                raise CaseError(source, f"model.{key}", "cannot be given together with model.random_heads (the random "
                                "heads are the model's attention; a model.perceptron may be added)")
    if "heads" in given or "random_heads" in given:
        for key in ONE_HEAD_KEYS:  # replaced: not part of the resolved case
            m[key] = None
    for h in (m["heads"] or []) + [h for e in m["schedule"] for h in e["heads"]]:
        h.setdefault("shift", m["shift"])
    t_end = case["solver"]["t_end"]
    for i, e in enumerate(m["schedule"]):
        if e["t"] > t_end:
            raise CaseError(source, "model.schedule", f"entry {i}: t = {e['t']:g} is beyond solver.t_end = {t_end:g}")


def _check_causal(case: dict, raw: dict, source) -> None:
    """``model.alibi`` and ``domain.positions`` need ``model.mask = "causal"``; a causal case's
    ``initial.function`` takes ``(s, x)``, any other one ``x``."""
    m = case["model"]
    causal = m["mask"] == "causal"
    if m["alibi"] and not causal:
        raise CaseError(source, "model.alibi", f"{m['alibi']:g} is the ALiBi slope of causal attention: it needs "
                        "model.mask = \"causal\" (or leave model.alibi out)")
    if case["domain"]["positions"] is not None and not causal:
        raise CaseError(source, "domain.positions", "number of position cells of the causal mean field: it needs "
                        "model.mask = \"causal\" (or leave domain.positions out)")
    init = case["initial"]
    if init["kind"] == "python" and init.get("function_object") is not None:
        _check_signature(init["function_object"], 2 if causal else 1, source)


def _check_signature(fn, count: int, source) -> None:
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or extension callable: checked by its call
    try:
        sig.bind(*range(count))
    except TypeError:
        want = "(s, x): position s (n,) and points x (n, d), the causal case's" if count == 2 else "(x): points (n, d)"
        hint = "" if count == 2 else " (a function of (s, x) needs model.mask = \"causal\")"
        raise CaseError(source, "initial.function", f"{getattr(fn, '__name__', fn)!r} takes {sig}, not {want} "
                        f"arguments{hint}") from None


def _check_target(diagnostics: dict, source) -> None:
    points, weights = diagnostics["target_points"], diagnostics["target_weights"]
    if weights and len(weights) != len(points):
        raise CaseError(source, "diagnostics.target_weights", f"needs one weight per target point ({len(points)}), "
                        f"got {len(weights)}")
    if weights and not sum(weights) > 0:
        raise CaseError(source, "diagnostics.target_weights", "must not all be zero")


def _check_mesh(domain: dict, source, base_dir: Path, given: dict | None = None) -> None:
    """``domain.mesh``: ``icosahedral:LEVEL`` or a file, resolved to an absolute path; a mesh
    given together with ``domain.d != 3`` is an error (meshes are surfaces in R^3)."""
    if domain["manifold"] != "sphere":
        return
    if domain["d"] != 3:
        if given and "mesh" in given:
            raise CaseError(source, "domain.mesh", f"a surface mesh lives in R^3, but domain.d = {domain['d']}: leave "
                            "domain.mesh out (particles on S^{d-1} need none; the PDE in any d is domain.manifold = "
                            "\"zonal\")")
        return
    spec = domain["mesh"]
    if spec.startswith("icosahedral:"):
        level = spec.split(":", 1)[1]
        if not level.isdigit() or int(level) > 10:
            raise CaseError(source, "domain.mesh", f"\"icosahedral:LEVEL\" needs an integer LEVEL from 0 to 10, got {spec!r}")
        return
    path = Path(spec)
    if not path.is_absolute():
        path = (base_dir / path).resolve()
    if not path.is_file():
        raise CaseError(source, "domain.mesh", f"no such mesh file: {path} (or use \"icosahedral:LEVEL\")")
    domain["mesh"] = str(path)


def _check_initial(init: dict, d: int, source, base_dir: Path) -> None:
    kind = init["kind"]

    def fail(key, reason):
        raise CaseError(source, f"initial.{key}", reason)

    if kind == "modes" and not init["modes"]:
        fail("modes", "initial.kind = \"modes\" needs at least one mode")
    if kind == "vmf":
        n = len(init["centers"])
        if n == 0:
            fail("centers", "initial.kind = \"vmf\" needs at least one centre")
        if len(init["kappas"]) != n:
            fail("kappas", f"needs one concentration per centre ({n}), got {len(init['kappas'])}")
        if not init["weights"]:
            init["weights"] = [1.0] * n
        if len(init["weights"]) != n:
            fail("weights", f"needs one weight per centre ({n}), got {len(init['weights'])}")
        if not sum(init["weights"]) > 0:
            fail("weights", "must not all be zero")
    if kind == "points":
        n = len(init["points"])
        if n == 0:
            fail("points", "initial.kind = \"points\" needs at least one point")
        if init["weights"] and len(init["weights"]) != n:
            fail("weights", f"needs one weight per point ({n}), got {len(init['weights'])}")
        if init["weights"] and not sum(init["weights"]) > 0:
            fail("weights", "must not all be zero")
    if kind == "python":
        if not init["function"]:
            fail("function", "initial.kind = \"python\" needs initial.function = \"file.py:name\"")
        init["function"], init["function_object"] = _load_function(init["function"], base_dir, source)


def _load_function(ref: str, base_dir: Path, source):
    if ":" not in ref:
        raise CaseError(source, "initial.function", f"expected \"path/file.py:name\" or \"module:name\", got {ref!r}")
    target, name = ref.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_absolute():
            path = (base_dir / path).resolve()
        if not path.is_file():
            raise CaseError(source, "initial.function", f"no such file: {path}")
        spec = importlib.util.spec_from_file_location(f"meanfield_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: any error is invalid input
            raise CaseError(source, "initial.function", f"error importing {path}: {type(exc).__name__}: {exc}") from None
        resolved = f"{path}:{name}"
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise CaseError(source, "initial.function", f"cannot import module {target!r}: {exc}") from None
        resolved = ref
    fn = getattr(module, name, None)
    if not callable(fn):
        raise CaseError(source, "initial.function", f"{name!r} is not a callable in {target}")
    return resolved, fn


#: Keys of ``[domain]`` that only one kind of manifold reads (the others leave them out of a
#: resolved case.toml).
MANIFOLD_KEYS = {"cells": ("circle", "zonal"), "mesh": ("sphere",), "edge_points": ("sphere",)}


def _check_output(out: dict, t_end: float, source) -> None:
    """The output times: uniform (``every``, default t_end / 20) or geometric (``per_decade``,
    ``first``); at most :data:`MAX_SNAPSHOTS`."""
    if out["per_decade"] is None:
        if out["first"] is not None:
            raise CaseError(source, "output.first", "is the first time of geometric snapshots: set "
                            "output.per_decade too (or leave output.first out)")
        if out["every"] is None:
            out["every"] = t_end / 20.0
        n_snapshots = t_end / out["every"]
        if n_snapshots > MAX_SNAPSHOTS:
            raise CaseError(source, "output.every", f"gives about {n_snapshots:.3g} snapshots up to solver.t_end = "
                            f"{t_end:g} (at most {MAX_SNAPSHOTS}); take a larger value")
        return
    if out["every"] is not None:
        raise CaseError(source, "output.every", "and output.per_decade exclude each other (uniform or geometric "
                        "snapshots): leave one out")
    if out["first"] is None:
        out["first"] = min(0.01, t_end / 10.0)
    if not out["first"] < t_end:
        raise CaseError(source, "output.first", f"must be below solver.t_end = {t_end:g}, got {out['first']:g}")
    n_snapshots = out["per_decade"] * math.log10(t_end / out["first"])
    if n_snapshots > MAX_SNAPSHOTS:
        raise CaseError(source, "output.per_decade", f"gives about {n_snapshots:.3g} snapshots from output.first = "
                        f"{out['first']:g} to solver.t_end = {t_end:g} (at most {MAX_SNAPSHOTS}); take fewer per "
                        "decade or a later output.first")


def output_times(t_end: float, every: float | None = None, per_decade: int | None = None,
                 first: float | None = None) -> list[float]:
    """The output times of a run: uniform ``0, every, 2 every, ...`` (computed by
    multiplication, no drift) or, with ``per_decade``, geometric ``0, first 10^(k /
    per_decade), ...``; then ``t_end`` (a time within 1e-12 t_end of it is replaced)."""
    if per_decade is None:
        n = int(math.floor(t_end / every * (1 + 1e-12)))
        times = [k * every for k in range(n + 1)]
    else:
        n = int(math.floor(per_decade * math.log10(t_end / first) * (1 + 1e-12)))
        # rounded to 12 digits: first = 0.1 gives 10.0, not 10.000000000000002, so that a run
        # whose t_end is a decade ends on the grid of a longer run (and is continued bitwise)
        times = [0.0] + [float(f"{first * 10.0 ** (k / per_decade):.12g}") for k in range(n + 1)]
    if t_end - times[-1] > 1e-12 * t_end:
        times.append(t_end)
    else:
        times[-1] = t_end
    return times


def case_output_times(case: dict) -> list[float]:
    """:func:`output_times` of a resolved case."""
    out = case["output"]
    return output_times(case["solver"]["t_end"], out["every"], out.get("per_decade"), out.get("first"))


def applies(case: dict, section: str, key: str) -> bool:
    """Whether ``section.key`` means anything for the case's manifold (``domain.mesh`` does not
    on the circle, ``domain.cells`` not on the sphere)."""
    if section == "domain" and key in MANIFOLD_KEYS:
        return case.get("domain", {}).get("manifold", "circle") in MANIFOLD_KEYS[key]
    return True


def dump_case(case: dict, unread: tuple = ()) -> dict:
    """The resolved case as plain TOML-serializable data (private keys dropped, and the keys
    another manifold reads, :func:`applies`). ``unread``: sections the run does not read
    (``particles`` and ``compare`` for ``meanfield run``), whose keys are kept only where
    the case sets them away from their defaults (so that ``meanfield particles DIR/case.toml``
    still runs the case as given); a section left empty is omitted."""
    out = {}
    for section, table in case.items():
        keep = {k: v for k, v in table.items() if k in SCHEMA[section] and v is not None
                and applies(case, section, k)}
        if section in unread:
            keep = {k: v for k, v in keep.items() if v != SCHEMA[section][k].default}
            if not keep:
                continue
        out[section] = keep
    return out


def _toml_value(v) -> str:
    import tomli_w

    if isinstance(v, list):  # tomli_w writes a non-empty array over several lines
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return tomli_w.dumps({"v": v}).split("=", 1)[1].strip()


def case_reference_markdown() -> str:
    """The case-file reference table (used to write ``docs/case-reference.md``)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            if spec.check is matrix:
                default = "`identity`"
            elif spec.default is None:
                default = "`t_end / 20`" if (section, key) == ("output", "every") else "not set"
            else:
                default = f"`{_toml_value(spec.default)}`"
            lines.append(f"| `{section}.{key}` | {default} | {spec.doc} |")
    return "\n".join(lines)

