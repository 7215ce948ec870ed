"""Semi-discrete optimal transport in latent space: pure computation, arrays in, arrays out.

Data flow: :func:`make_problem` validates targets and weights; :class:`CellIndex` answers
which cell of the power diagram holds a point; :func:`estimate` measures cells by Monte
Carlo, through one :class:`Estimator` chosen by :func:`resolve_estimator` (host, fused GPU or
torch.distributed), and :func:`power_diagram` exactly in 2D and 3D; :func:`fit` finds the
heights; :func:`save_state` / :func:`load_state` make fits resumable;
:func:`build_extended_map` finds the singular set (its threshold chosen by one
:data:`ThresholdRule`) and gives the pure map T, the extended map T~ and interpolation;
:class:`Potential` bundles fitted heights, their accuracy and T~ with ``build`` / ``save`` /
``load`` (pictures: :mod:`solver.plots`, imported on demand).
"""

from solver.cells.index import (
    BACKENDS,
    BackendSpec,
    CellIndex,
    DeviceKind,
    IvfRecall,
    available_backends,
    backend_for_device,
    faiss_version,
    ivf_recall,
    nearest_neighbours,
    resolve_backend,
)
from solver.cells.power_diagram import PowerDiagram, power_diagram
from solver.cells.triton_index import TritonBackend
from solver.estimation.estimator import (
    ESTIMATOR_NAMES,
    DistributedEstimator,
    Estimator,
    FusedEstimator,
    HostEstimator,
    resolve_estimator,
)
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
    resolve_method,
)
from solver.fitting.driver import fit, follow_fit, release_followers
from solver.measures import SourceMeasure
from solver.potential.diffusion import (
    DiffusionEmbedding,
    diffusion_distances,
    diffusion_embedding,
)
from solver.potential.extended_map import (
    DEFAULT_BLEND_MARGIN,
    Crossing,
    ExtendedMap,
    Interpolation,
    build_extended_map,
)
from solver.potential.file_format import PotentialFormatError
from solver.potential.potential import Potential, PotentialConfig, check_accuracy
from solver.potential.singular import (
    Adjacency,
    AngleFrame,
    SingularSet,
    adjacency_from_estimate,
    dihedral_angles,
    find_singular_set,
    frame_angles,
)
from solver.potential.threshold import (
    DEFAULT_RULE,
    ClusterShare,
    FixedThreshold,
    GapThreshold,
    QuantileThreshold,
    RuleName,
    ThresholdRule,
    parse_rule,
    rule_from_dict,
    rule_to_dict,
)
from solver.problem import OTProblem, make_problem
from solver.seeding import derive_seed

__all__ = [
    "ESTIMATOR_NAMES",
    "DistributedEstimator",
    "Estimator",
    "FusedEstimator",
    "HostEstimator",
    "resolve_estimator",
    "AccuracyReport",
    "AdamConfig",
    "ExactConfig",
    "PowerDiagram",
    "power_diagram",
    "Adjacency",
    "AngleFrame",
    "DEFAULT_BLEND_MARGIN",
    "DEFAULT_RULE",
    "FixedThreshold",
    "GapThreshold",
    "Potential",
    "PotentialConfig",
    "PotentialFormatError",
    "QuantileThreshold",
    "ClusterShare",
    "DiffusionEmbedding",
    "diffusion_embedding",
    "diffusion_distances",
    "RuleName",
    "ThresholdRule",
    "check_accuracy",
    "parse_rule",
    "resolve_method",
    "nearest_neighbours",
    "rule_from_dict",
    "rule_to_dict",
    "Crossing",
    "ExtendedMap",
    "Interpolation",
    "SingularSet",
    "adjacency_from_estimate",
    "build_extended_map",
    "dihedral_angles",
    "find_singular_set",
    "frame_angles",
    "CellIndex",
    "IvfRecall",
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
    "BACKENDS",
    "BackendSpec",
    "DeviceKind",
    "backend_for_device",
    "faiss_version",
    "ivf_recall",
    "TritonBackend",
    "brenier_potential",
    "derive_seed",
    "dual_value",
    "estimate",
    "fit",
    "follow_fit",
    "release_followers",
    "kantorovich_potential",
    "load_state",
    "make_problem",
    "resolve_backend",
    "samples_for_noise_floor",
    "save_state",
]
