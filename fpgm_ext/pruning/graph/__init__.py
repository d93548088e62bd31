"""Channel dependency groups of a model, found from its graph, not from module names.

The model is traced with ``torch.fx`` (``symbolic_trace`` with the pruner's leaf modules),
or with ``torch.export`` where fx fails and example inputs are given. Every tensor on the
way carries a *layout*: the channel spaces its dimension 1 is made of, in order (one for
a conv output, several after a ``torch.cat``). A *space* is the output channels of one
producer (a conv, a linear, a ``PadShortcut``); spaces that must lose the same channels
are joined into a *group*:

- a residual addition (``+``/``-``) joins the spaces of its operands channel for channel
  (all producers of a residual stream form one group);
- a product ``x * s`` (a squeeze-excitation scale) joins them too;
- a grouped or depthwise convolution joins its input and output spaces *by conv group*:
  the group is then pruned in units of whole conv groups (``units``);
- a GroupNorm prunes its input's spaces in units of whole GN groups (a group's statistics
  are its own channels'); with one group it is a LayerNorm over channels, as a LayerNorm
  over the last dimension is: a member whose statistics change, left alone with a reason
  marked ``APPROXIMATE`` that ``prune(approximate=True)`` lifts;
- a weight-standardised conv (its weight normalised per filter at each forward) prunes its
  filters and their gain, never its input channels (that would change every filter);
- ``torch.cat`` along channels makes no join: the consumer's input channels are the
  concatenated spaces at their offsets (DenseNet);
- where layouts of the same width are cut differently (a concatenation added to one
  conv's output, GhostNet's residual with a conv shortcut; a depthwise conv on a
  concatenation), the analysis cuts the spaces at every boundary of either: a *sub-space*
  is a run of a producer's channels (``Space.offset``), with a group of its own. The cuts
  found by one pass over the graph are made by the next, until none is new;
- a channel split with constant sizes (fx graphs: ``split``, ``chunk``, ``narrow``, a
  slice of dim 1) cuts its input the same way, each piece its own spaces; it is recorded
  in ``Analysis.channel_ops`` for the surgery, which rewrites its sizes in the fx graph;
- flatten into a ``Linear``: each channel expands to the ``H*W`` features it became;
- a ``Linear`` on an input of rank >= 3 ([B, T, C] tokens, [B, H, W, C] channels-last)
  works on the last dimension: its output's layout is marked ``Val.last`` and may only
  pass elementwise ops into the next ``Linear`` (the hidden dimension of an MLP), or be
  reshaped into attention heads (fx: ``heads.py``; q, k and v lose the same whole heads,
  the output projection their columns, and the reshapes' head counts are rewritten as
  splits are); an op not named here leaves it alone;
- a permute or transpose moves such a layout between the last dimension and dim 1, and a
  reshape between ``[B, C, H*W]`` and ``[B, C, H, W]`` (or ``[B, H*W, C]`` and
  ``[B, H, W, C]``) keeps the channels where they are, its channel count -1 or read at
  run time from them (fx; torch.export graphs hold constants, which the plan's check on
  the model's code judges): tokens put back as an image are one group with the image's
  channels, joined by a residual across the two layouts (``layouts.py``, both tracers);
- ``unsqueeze``, an index of None and full slices, and ``unflatten`` of another dim add or
  split dims beside the channels, which follow their dim to dim 1 or the last
  (``broadcast.py``, both tracers): a ``[B, C]`` scale from Linear layers broadcast as
  ``s[:, :, None, None]`` joins the channels it scales, as a conv-based squeeze-excitation
  does; anything that splits the channels or puts them elsewhere leaves them alone;
- a tensor attribute (fx: ``get_attr``; export: a parameter placeholder) whose one use,
  through views, ``unsqueeze`` or an index of None, is a product or sum with activations
  (a layer scale ``gamma[None, :, None, None]``) is pruned with the channels it meets
  (``Use.kind == "param"``); one entry for every channel (a dim of 1, or a scale per row)
  is no member, and a product with it keeps zeros.

A space is *frozen* (left unpruned, with the reason recorded) when its channels reach
anything the analysis does not understand: an op it does not know (reported by name),
the model's output, the model's input, a module attribute used as a tensor, or a consumer
that would see a pruned channel as non-zero (after a ``sigmoid``, an added constant, a
BatchNorm without affine). A frozen space freezes its whole group: a pattern the analysis
cannot prove safe is left unpruned, never pruned wrongly.

A ``PadShortcut`` (the CIFAR ResNets' parameter-free shortcut) is a producer of its own
output space: the streams before and after it are separate groups, and the selection
(select.py) prunes an output channel it feeds only together with the feeding channel.

"Safe" is checked against the zeroing criterion: zeroing the pruned channels of every
member (conv and linear filters and biases, BatchNorm weight and bias) must make every
consumer see exactly zero in those channels; then removing them changes nothing. Each
channel segment carries that flag (``Seg.zero``) through the graph.

The package, one job per file:

- ``model.py``: the records (spaces, layouts, uses, the resulting groups and ops);
- ``tracing.py``: fx or export tracing, node shapes, ``TraceFailure``;
- ``nodes.py``: what an fx node's spelling says (its op's name, reshape, split);
- ``rules.py``: the op table, every op spelling (module type, function, Tensor method,
  aten op) mapped to its ``Rule`` and whether it is elementwise, and the helpers that
  read a rule's arguments (the layers' module types come from ``pruning/layers``);
- ``analyzer.py``: ``Analyzer``, one pass: ``spaces.py`` (the spaces, their joining and
  freezing), ``layer_rules.py`` and ``tensor_rules.py`` (one method per rule), and the
  fx-only extensions' state records (``state.py``);
- ``visit.py``: what both visitors share, the tensor ops' rules by ``Rule``;
- ``fx.py``, ``export.py``: the visitors of an fx and of an export graph;
- ``broadcast.py``: dims added or split beside the channels (both tracers);
- ``layouts.py``: channels-last and token layouts, tensor members (fx, and through
  ``visit_export`` and ``export_param`` the export graph's permutes, views, sums,
  products and parameter placeholders);
- the fx-only extensions: ``functional.py`` (layers called on their own module's tensors,
  weight-standardised convs), ``heads.py`` (attention heads), ``radix.py`` (split
  attention's radix groups), ``sizes.py`` (channel counts read at run time);
- this file: ``analyse``, which runs the passes, and the grouping of the joined spaces.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Dict, List, Optional

from torch import nn

from ..families import outputs_for
from ..outputs import Outputs
from .analyzer import Analyzer
from .export import _visit_export
from ..layers import registered_handlers
from ..rule import LAYERS, Rule
from .export import LAYER_CALLS as EXPORT_LAYER_CALLS
from .functional import LAYER_CALLS as FX_LAYER_CALLS, find_standardised
from .fx import _visit_fx
from .sizes import check as check_size_reads
from .state import NodeIndex
from .model import NOT_TENSOR, Analysis, Group, Seg, Space, Tup, Use, Val
from .rules import RULES, TABLE, Entry, entry_of
from .modes import other_mode_uses
from .tracing import TraceFailure, Traced, _fx_graph, trace, untouched
from .tracing import _ModeGuard as _ModeGuard   # (flops.py)
from .visit import TENSOR_RULES

__all__ = ["Analysis", "Group", "Space", "Use", "Val", "Seg", "Tup", "NOT_TENSOR", "TraceFailure",
           "analyse", "trace", "RULES", "TABLE", "Entry", "entry_of"]


def analyse(model: nn.Module, example_inputs=None, method: str = "auto", flops=None,
            outputs: Optional[Outputs] = None) -> Analysis:
    """Traces ``model`` and returns its channel groups (see the module docstring).
    ``flops``: a ``flops.FlopRecorder`` that counts the FLOPs of the run that finds the
    shapes (fx only), so that ``prune`` need not run the model again to measure it.
    ``outputs``: the outputs that keep their channels (../outputs.py; default: the model
    family's rule, else all)."""
    outputs = outputs_for(model) if outputs is None else outputs
    with untouched(model):   # (fx's trace constants, what a forward caches while traced)
        return _analyse(model, example_inputs, method, flops, outputs)


def _analyse(model, example_inputs, method, flops, outputs: Outputs) -> Analysis:
    traced = trace(model, example_inputs, method, flops)
    # A pass may find that a producer's channels must be cut into sub-spaces (a residual
    # addition of a concatenation, a depthwise conv on one): the next pass starts with
    # those cuts, until none is new (or MAX_PASSES: the groups still unmatched stay frozen).
    cuts: Dict[str, set] = {}
    radix: set = set()   # producers laid out in radix groups (radix.py), for the next pass
    for _ in range(MAX_PASSES):
        A = _walk(model, traced, outputs, cuts, radix)
        if not A.requests and A.radix.found <= radix:
            break
        for producer, at in A.requests.items():
            cuts.setdefault(producer, set()).update(at)
        radix |= A.radix.found
    if traced.tracer == "fx":
        for node, why in other_mode_uses(model, traced.graph, _fx_graph).items():
            A.freeze(A.vals.get(node), why)
    return _finish(A, outputs)


MAX_PASSES = 8


def check_rules() -> None:
    """Every rule has what applies it: a tensor rule its function (visit.py), a layer rule
    a registered handler (layers/) and, for each of its functional and aten spellings in
    the table, the call that finds its module (functional.py, export.py)."""
    for rule in Rule:
        if rule not in LAYERS and rule not in TENSOR_RULES:
            raise AssertionError(f"fpgm_ext: the rule {rule.value} has no function in graph/visit.py")
        if rule in LAYERS and not any(h.rule == rule for h in registered_handlers()):
            raise AssertionError(f"fpgm_ext: the layer rule {rule.value} has no registered layer handler")
    for (kind, spelling), entry in TABLE.items():
        calls = {"function": FX_LAYER_CALLS, "aten": EXPORT_LAYER_CALLS}.get(kind)
        if entry.rule in LAYERS and calls is not None and entry.rule not in calls:
            raise AssertionError(f"fpgm_ext: {kind} {spelling!r} follows the layer rule {entry.rule.value}, "
                                 "which no call finds the module of")


check_rules()


def _walk(model, traced: Traced, outputs: Outputs, cuts, radix=frozenset()) -> Analyzer:
    """One pass over the traced graph, starting from the cuts and radix producers found."""
    A = Analyzer(model, traced.shapes, traced.tracer, traced.names, {k: set(v) for k, v in cuts.items()}, radix)
    A.outputs = outputs
    A.out_spec = traced.owner.call_spec.out_spec if traced.tracer == "export" else None
    fx = traced.tracer == "fx"
    if fx:
        find_standardised(A, traced.graph)
        A.index = NodeIndex.of(traced.graph)
    for node in traced.graph.nodes:
        val = _visit_fx(A, node, traced.owner) if fx else _visit_export(A, node, None)
        shape = traced.shapes.get(node.name)
        if isinstance(val, Val) and val.tensor and isinstance(shape, tuple) and \
                all(isinstance(s, int) for s in shape):
            val = replace(val, rank=len(shape))
        A.vals[node.name] = val
    if fx:
        check_size_reads(A, traced.graph)
    return A


def _finish(A: Analyzer, outputs: Outputs) -> Analysis:
    A.check_size_links()
    roots: Dict[int, List[int]] = {}
    for s in range(len(A.spaces)):
        roots.setdefault(A.find(s), []).append(s)
    ties: Dict[int, List[int]] = {}
    for s, g in A.ties:
        ties.setdefault(A.find(s), []).append(g)
    residual = {A.find(s) for s in A.residual_edges}
    groups, group_of = [], {}
    for root, spaces in sorted(roots.items()):
        reasons: List[str] = []
        for s in spaces:
            for r in A.spaces[s].reasons:
                if r not in reasons:
                    reasons.append(r)
        sizes = [A.spaces[s].size for s in spaces]
        units = 0
        for v in [z for z in sizes if z is not None] + ties.get(root, []):
            units = math.gcd(units, v)
        if any(z is None for z in sizes) and not reasons:
            reasons.append("a channel count is unknown")
        gid = len(groups)
        groups.append(Group(gid, spaces, units, root in residual, reasons))
        for s in spaces:
            group_of[s] = gid
    return Analysis(A.tracer, A.spaces, A.uses, groups, group_of, A.unsupported, dict(A.channel_ops),
                    dict(A.head_ops), dict(A.param_dims), list(A.equal_counts), outputs)
