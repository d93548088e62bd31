"""Physical FPGM pruning of whole models.

    pruned, report = fpgm_ext.prune(model, torch.randn(1, 3, 32, 32), rate_dist=0.4)
    report.plan.save("plan.json")
    same = fpgm_ext.apply_plan(fresh_model, "plan.json")   # then load_state_dict(pruned.state_dict())

prune.py   prune() and make_plan(): trace, analyse, decide, check, surgery, measure
config.py  Settings: the settings of one prune, one record
rule.py    Rule: the channel rules by name
tracer.py  trace="auto": which tracer's analysis
graph/     channel dependency groups from torch.fx / torch.export (the op table, the
           analyzer, the visitors and the fx-only extensions)
layers/    per-layer knowledge: one handler per layer kind; register_layer
select.py  the official two-stage selection of every group, one scoring call
decide.py  the plan of an analysed model
plan/      Plan (JSON), apply_plan() (the surgery, one gather_channels call), PrunedGraph,
           pruned_masks() / zero_pruned()
checks.py  plans checked on the model's own code
flops.py   measured FLOPs and parameters (FlopCounterMode)
target.py  target_flops / target_params: the uniform rate_dist that reaches a reduction
report.py  PruneReport

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
