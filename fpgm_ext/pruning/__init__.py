"""Physical FPGM pruning of whole models.

    pruned, report = fpgm_ext.prune(model, torch.randn(1, 3, 32, 32), rate_dist=0.4)
    report.plan.save("plan.json")
    same = fpgm_ext.apply_plan(fresh_model, "plan.json")   # then load_state_dict(pruned.state_dict())

graph.py  channel dependency groups from torch.fx / torch.export
prune.py  prune(): scores (one distance_scores_multi call), two-stage selection, plan
plan.py   Plan (JSON) and apply_plan(): the surgery (one gather_channels call)
flops.py  measured FLOPs and parameters (FlopCounterMode)
report.py PruneReport
layers.py PadShortcut, the CIFAR ResNets' parameter-free shortcut, prunable by mapping
"""
from .graph import Analysis, TraceFailure, analyse
from .layers import PadShortcut
from .plan import Plan, apply_plan
from .prune import PruneResult, prune
from .report import LayerStat, PruneReport

__all__ = ["prune", "apply_plan", "analyse", "Plan", "PruneReport", "PruneResult", "LayerStat",
           "PadShortcut", "Analysis", "TraceFailure"]
