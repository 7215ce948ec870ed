"""Semi-discrete optimal transport in latent space: pure computation, arrays in, arrays out.

Data flow: :func:`make_problem` validates targets and weights; :class:`CellIndex` answers
which cell of the power diagram holds a point; :func:`estimate` measures cells by Monte
Carlo, :func:`power_diagram` exactly in 2D and 3D; :func:`fit` finds the heights;
:func:`save_state` / :func:`load_state` make fits resumable; :func:`build_extended_map` finds
the singular set and gives the pure map T, the extended map T~ and interpolation (pictures:
:mod:`solver.plots`, imported on demand).
"""

from solver.cells.index import CellIndex, available_backends, faiss_version, resolve_backend
from solver.cells.power_diagram import PowerDiagram, power_diagram
from solver.cells.triton_index import TritonBackend
from solver.estimation.host import (
    AccuracyReport,
    MeasureEstimate,
    accuracy,
    brenier_potential,
    dual_value,
    estimate,
    kantorovich_potential,
    samples_for_noise_floor,
)
from solver.fitting.checkpoint import atomic_write_bytes, load_state, save_state
from solver.fitting.config import (
    AdamConfig,
    ExactConfig,
    FitConfig,
    FitProgress,
    FitRecord,
    FitResult,
    FitState,
    NewtonConfig,
)
from solver.fitting.driver import fit
from solver.measures import SourceMeasure
from solver.potential.extended_map import Crossing, ExtendedMap, Interpolation, build_extended_map
from solver.potential.singular import (
    Adjacency,
    AngleFrame,
    Rule,
    SingularSet,
    adjacency_from_estimate,
    dihedral_angles,
    find_singular_set,
)
from solver.problem import OTProblem, make_problem
from solver.seeding import derive_seed

__all__ = [
    "AccuracyReport",
    "AdamConfig",
    "ExactConfig",
    "PowerDiagram",
    "power_diagram",
    "Adjacency",
    "AngleFrame",
    "Rule",
    "Crossing",
    "ExtendedMap",
    "Interpolation",
    "SingularSet",
    "adjacency_from_estimate",
    "build_extended_map",
    "dihedral_angles",
    "find_singular_set",
    "CellIndex",
    "FitConfig",
    "FitProgress",
    "FitRecord",
    "FitResult",
    "FitState",
    "MeasureEstimate",
    "NewtonConfig",
    "OTProblem",
    "SourceMeasure",
    "accuracy",
    "atomic_write_bytes",
    "available_backends",
    "faiss_version",
    "TritonBackend",
    "brenier_potential",
    "derive_seed",
    "dual_value",
    "estimate",
    "fit",
    "kantorovich_potential",
    "load_state",
    "make_problem",
    "resolve_backend",
    "samples_for_noise_floor",
    "save_state",
]
