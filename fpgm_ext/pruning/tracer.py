"""Which tracer's analysis a prune uses with ``trace="auto"``: torch.fx's, and where fx
leaves a quarter or more of the channels alone for ops it does not know, torch.export's
too, whichever leaves more channels prunable."""
from __future__ import annotations

from . import graph as _graph
from .families import family_of
from .graph.sizes import EAGER_REASONS


def _channels(analysis, keep=lambda g: True) -> int:
    """Output channels of the conv and linear layers in the groups ``keep`` accepts."""
    spaces = analysis.spaces
    return sum(spaces[s].size or 0 for g in analysis.groups if keep(g)
               for s in g.spaces if spaces[s].kind in ("conv", "linear"))


def _prunable(analysis) -> int:
    return _channels(analysis, lambda g: not g.reasons)


def analyse_model(model, example_inputs, trace: str, flops=None, outputs=None, rate: float = 0.4):
    """(analysis, why this tracer). ``trace="auto"``: torch.fx's analysis; where fx leaves
    at least a quarter of the conv and linear channels alone for ops it does not know (and
    example inputs allow it), torch.export's too, and whichever leaves more channels
    prunable (fx on a tie). torch.export costs seconds (more on its first call in a
    process); models fx (nearly) fully understands, most CNNs, pay for one trace only."""
    family = family_of(model)
    if trace == "auto" and family.analyse is not None and example_inputs is not None:   # (checked on them)
        found = family.analyse(model, example_inputs, outputs or family.outputs, rate)
        if found is not None:
            return found, "analysed from the module structure (its blocks known by their modules; checked on its code)"
    analysis = _graph.analyse(model, example_inputs, trace, flops, outputs)
    if trace != "auto" or analysis.tracer != "fx" or not analysis.unsupported or example_inputs is None:
        return analysis, ""
    blocked = _channels(analysis, lambda g: any("unsupported op" in r for r in g.reasons))
    if 4 * blocked < _channels(analysis):
        return analysis, ""
    try:
        other = _graph.analyse(model, example_inputs, "export", outputs=outputs)
    except _graph.TraceFailure:
        return analysis, "torch.export could not trace it either"
    _carry_eager_reasons(analysis, other)
    ours, theirs = _prunable(analysis), _prunable(other)
    if theirs > ours:
        return other, (f"trace='auto' kept torch.export's analysis: {theirs} prunable channels "
                       f"against torch.fx's {ours}")
    return analysis, f"trace='auto' kept torch.fx's analysis ({ours} prunable channels, torch.export {theirs})"


def _carry_eager_reasons(fx, export) -> None:
    """The layers whose output channels torch.fx left alone for what only the eager code
    shows (a channel count read at run time or spelled as a constant: graph/sizes.py) stay
    alone in torch.export's analysis, whose graph holds every size as a constant."""
    for name, use in fx.uses.items():
        if use.kind not in ("conv", "linear") or name not in export.uses:
            continue
        why = next((r for s in use.out_spaces for r in fx.groups[fx.group_of[s]].reasons
                    if any(e in r for e in EAGER_REASONS)), None)
        if why is None:
            continue
        for s in export.uses[name].out_spaces:
            reasons = export.groups[export.group_of[s]].reasons
            if f"torch.fx: {why}" not in reasons:
                reasons.append(f"torch.fx: {why}")
