"""Physical FPGM pruning of whole models.

    pruned, report = fpgm_ext.prune(model, torch.randn(1, 3, 32, 32), rate_dist=0.4)
    report.plan.save("plan.json")
    same = fpgm_ext.apply_plan(fresh_model, "plan.json")   # then load_state_dict(pruned.state_dict())

graph/    channel dependency groups from torch.fx / torch.export (tracing.py; rules.py,
          the one table from op spelling to channel rule; analyzer.py; fx.py, export.py)
prune.py  prune(): scores (one distance_scores_multi call), the two-stage selection of
          fpgm_ext.selection per group (with PadShortcut constraints), plan;
          make_plan(): the plan alone, no surgery (SoftFPGM re-plans every epoch)
plan.py   Plan (JSON) and apply_plan(): the surgery (one gather_channels call);
          pruned_masks() / zero_pruned(): the same channels zeroed in place instead
flops.py  measured FLOPs and parameters (FlopCounterMode), counted during the analysis's
          forward and derived for the pruned model where every FLOP is a conv's or linear's
target.py target_flops / target_params: the uniform rate_dist that reaches a reduction
report.py PruneReport
layers.py PadShortcut, the CIFAR ResNets' parameter-free shortcut, prunable by mapping

Argument checks are in fpgm_ext._checks, the operators in fpgm_ext.ops; this package
imports only those leaf modules of fpgm_ext (and fpgm_ext.selection), never its __init__.
"""
from .graph import Analysis, TraceFailure, analyse
from .layers import PadShortcut, register_layer, unregister_layer
from .plan import Plan, PrunedGraph, apply_plan, pruned_masks, zero_pruned
from .prune import PruneResult, make_plan, prune
from .report import LayerStat, PruneReport

__all__ = ["prune", "apply_plan", "make_plan", "pruned_masks", "zero_pruned", "analyse", "register_layer", "unregister_layer", "Plan",
           "PrunedGraph",
           "PruneReport", "PruneResult", "LayerStat", "PadShortcut", "Analysis", "TraceFailure"]
