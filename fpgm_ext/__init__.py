"""fpgm_ext: compiled kernels for FPGM filter pruning (He et al., CVPR 2019).

    scores = fpgm_ext.distance_scores(conv.weight)          # [N]: small = replaceable
    keep, prune = fpgm_ext.select(conv.weight, rate_dist=0.4)

The operators are torch.ops.fpgm.*; this package is a thin, documented front to them
(fpgm_ext.ops), with the official selection (fpgm_ext.selection), whole-model pruning
(fpgm_ext.pruning) and soft pruning during training (fpgm_ext.soft).
"""
from . import _backend
from ._backend import backend_info

_backend.load()  # the operators exist before anything that calls them is imported

from . import models, reference  # noqa: E402,F401  (fpgm_ext.reference: the fallback kernels, an ops= object)
from .ops import distance_matrix, distance_scores, distance_scores_multi, gather_channels  # noqa: E402
from .pruning import apply_plan, prune  # noqa: E402
from .selection import Selection, select  # noqa: E402
from .soft import SoftFPGM  # noqa: E402

__all__ = ["backend_info", "distance_scores", "distance_matrix", "distance_scores_multi",
           "gather_channels", "select", "Selection", "prune", "apply_plan", "models", "SoftFPGM"]
__version__ = "0.1.0"
