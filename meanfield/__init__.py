"""meanfield: the mean-field limit of Transformer self-attention on the circle and the sphere.

Densities on S^{d-1} evolve by ``d/dt rho + div(rho X[rho]) = 0`` with the attention
velocity field X (:mod:`meanfield.fields.attention`). Importing the package never imports MPI.

Typical script use::

    import meanfield as mf
    case = mf.load_case("cases/circle_sa_clusters.toml", ["model.beta=4"])
    result = mf.run_case(case, out_dir="runs/beta4")

or build the pieces directly (see ``cases/api_example.py``).
"""

from .fields.attention import AttentionModel, DirectField, FieldOverflowError, growth_rate
from .dynamics.model import Head, RandomHeads, Terms, VelocityModel
from .dynamics.perceptron import Perceptron
from .dynamics.velocity import Velocity
from .fields.energy import energy
from .io.case import CaseError, load_case, resolve_case
from .diagnostics import ClusterCriterion, find_clusters
from .pde.finite_volume import SCHEMES, FiniteVolume
from .initial import project, real_sph_harm
from .geometry.mesh import CircleMesh, Mesh
from .run import RunFailure, RunResult, run_case
from .pde.solver import Simulation, State, make_velocity
from .pde.timestepping import INTEGRATORS, SSPRK3

__version__ = "0.1.0"

__all__ = [
    "AttentionModel",
    "CaseError",
    "CircleMesh",
    "ClusterCriterion",
    "DirectField",
    "FieldOverflowError",
    "FiniteVolume",
    "Head",
    "INTEGRATORS",
    "Mesh",
    "Perceptron",
    "RandomHeads",
    "RunFailure",
    "RunResult",
    "SCHEMES",
    "SSPRK3",
    "Simulation",
    "State",
    "Terms",
    "Velocity",
    "VelocityModel",
    "energy",
    "find_clusters",
    "growth_rate",
    "load_case",
    "make_velocity",
    "project",
    "real_sph_harm",
    "resolve_case",
    "run_case",
]
