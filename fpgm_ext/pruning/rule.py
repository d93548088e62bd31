"""The channel rules of the analysis, by name: every op spelling of the op table
(graph/rules.py) and every layer handler (layers/) names the rule it follows."""
from enum import Enum


class Rule(str, Enum):
    """A channel rule (a str, so that a rule compares and hashes as its name)."""
    CONV = "conv"
    LINEAR = "linear"
    BN = "bn"
    GN = "gn"
    LN = "ln"
    PRELU = "prelu"
    SHORTCUT = "shortcut"
    CONSTANT_PAD = "constant_pad"
    PASS = "pass"
    NONZERO = "nonzero"
    HARDTANH = "hardtanh"
    CLAMP = "clamp"
    PAD = "pad"
    ADD = "add"
    MUL = "mul"
    DIV = "div"
    CAT = "cat"
    FLATTEN = "flatten"
    VIEW = "view"
    UNSQUEEZE = "unsqueeze"
    UNFLATTEN = "unflatten"
    REDUCE = "reduce"
    SLICE = "slice"
    GETITEM = "getitem"
    POOL_INDICES = "pool_indices"
    SPLIT = "split"
    SIZE = "size"
    SCALAR = "scalar"
    CAST = "cast"
    NEW = "new"


LAYERS = frozenset({Rule.CONV, Rule.LINEAR, Rule.BN, Rule.GN, Rule.LN, Rule.PRELU, Rule.SHORTCUT,
                    Rule.CONSTANT_PAD})   # the op computes with one module's own tensors
