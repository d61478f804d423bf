"""Particles evolved with the spectral backend follow the direct-backend trajectories."""

import numpy as np
import pytest

import meanfield as mf
from meanfield.particles.system import ParticleState, ParticleSystem
from meanfield.particles.sampling import sample
from meanfield.pde.solver import make_field


@pytest.mark.parametrize("d, normalized, beta, Q", [
    (2, True, 4.0, None), (2, False, 4.0, None), (2, True, 4.0, [[1.0, 0.4], [-0.3, 0.8]]),
    (3, True, 4.0, None), (3, False, 1.0, 2 * np.eye(3)),
])
def test_spectral_particles_follow_direct(d, normalized, beta, Q):
    model = mf.AttentionModel(d=d, beta=beta, Q=Q, normalized=normalized)
    spec = mf.resolve_case({"domain": {"manifold": "circle" if d == 2 else "sphere"},
                            "initial": {"kind": "vmf", "centers": [[1.0] + [0.0] * (d - 1), [0.0, 1.0] + [0.0] * (d - 2)],
                                        "kappas": [2.0, 3.0]}})["initial"]
    x, w = sample(spec, d, 400, seed=1)
    finals = []
    for backend in ("direct", "spectral"):
        field = make_field(model, backend, tolerance=1e-12)
        assert field.name == backend
        system = ParticleSystem(field, dt="auto")
        state = ParticleState.create(x, w)
        system.advance(state, 1.0)
        finals.append(state.x)
    moved = np.abs(finals[0] - x).max()
    assert moved > 0.05  # the particles did move
    assert np.abs(finals[1] - finals[0]).max() < 1e-10
