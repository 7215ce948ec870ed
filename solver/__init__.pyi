"""Types of the public names of :mod:`solver`, which loads each on first use (``__init__.py``)."""

from .cells.index import (
    BACKENDS,
    CellIndex,
    available_backends,
    backend_for_device,
    faiss_version,
    nearest_neighbours,
)
from .cells.power_diagram import PowerDiagram, power_diagram
from .cells.triton_index import TritonBackend
from .estimation.estimator import Estimator, resolve_estimator
from .estimation.host import (
    AccuracyReport,
    MeasureEstimate,
    accuracy,
    dual_value,
    estimate,
    kantorovich_potential,
)
from .estimation.spec import PassSpec
from .fitting.checkpoint import atomic_write_bytes, load_state, save_state
from .fitting.config import (
    AdamConfig,
    ExactConfig,
    FitConfig,
    FitProgress,
    FitResult,
    FitState,
    NewtonConfig,
    resolve_method,
)
from .fitting.driver import fit, follow_fit, release_followers
from .measures import SourceMeasure
from .potential.diffusion import (
    DiffusionEmbedding,
    count_modes,
    diffusion_distances,
    diffusion_embedding,
)
from .potential.extended_map import (
    ExtendedMap,
    Interpolation,
    build_extended_map,
)
from .potential.file_format import PotentialFormatError
from .potential.potential import Potential, PotentialConfig, check_accuracy
from .potential.singular import (
    Adjacency,
    AngleFrame,
    SingularSet,
    cluster_share_threshold,
    dihedral_angles,
    find_singular_set,
    frame_angles,
    standardise_targets,
)
from .potential.threshold import (
    DEFAULT_BLEND_MARGIN,
    DEFAULT_RULE,
    ClusterShare,
    FixedThreshold,
    GapThreshold,
    QuantileThreshold,
    ThresholdRule,
    parse_rule,
)
from .problem import OTProblem, make_problem
from .seeding import derive_seed

__all__ = [
    "Estimator",
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
    "count_modes",
    "cluster_share_threshold",
    "standardise_targets",
    "ThresholdRule",
    "check_accuracy",
    "parse_rule",
    "resolve_method",
    "nearest_neighbours",
    "ExtendedMap",
    "Interpolation",
    "SingularSet",
    "build_extended_map",
    "dihedral_angles",
    "find_singular_set",
    "frame_angles",
    "CellIndex",
    "FitConfig",
    "FitProgress",
    "FitResult",
    "FitState",
    "MeasureEstimate",
    "PassSpec",
    "NewtonConfig",
    "OTProblem",
    "SourceMeasure",
    "accuracy",
    "atomic_write_bytes",
    "available_backends",
    "BACKENDS",
    "backend_for_device",
    "faiss_version",
    "TritonBackend",
    "derive_seed",
    "dual_value",
    "estimate",
    "fit",
    "follow_fit",
    "release_followers",
    "kantorovich_potential",
    "load_state",
    "make_problem",
    "save_state",
]
