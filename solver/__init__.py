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

import lazy_loader

# Each public name loads its module on first use (lazy_loader reads the names and their
# modules from __init__.pyi, which also gives type checkers the types). A process that needs
# only the configs and the threshold rules (the CLI, the service's settings) then starts
# without torch, FAISS and scipy: `aeot --help` in 0.7 s instead of 3.3 s.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
