"""The layer registry: module type -> its handler (``base.Layer``). The pruner's own
handlers are registered by the files of this package; ``register_layer`` is public, so
that a user can teach the pruner a layer of their own."""
from __future__ import annotations

from typing import Dict, Optional, Set, Union

from torch import nn

from .base import Layer

_BY_TYPE: Dict[type, Layer] = {}
_BY_NAME: Dict[str, Layer] = {}   # layers of packages this one does not import
_LEAVES: Set[Union[type, str]] = set()   # traced by torch.fx as one call (exact classes)


def type_name(obj) -> str:
    """A class's module-qualified name (of ``obj``'s class unless ``obj`` is a class):
    how layers of packages this one does not import are named (timm, torchvision)."""
    kind = obj if isinstance(obj, type) else type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def register_layer(layer_type: Union[type, str], handler: Layer, *, leaf: bool = True) -> None:
    """Teaches the pruner a layer: every module of ``layer_type`` (a subclass of
    ``nn.Module``, or its module-qualified class name, for a class of a package that need
    not be imported) and of its subclasses is treated as ``handler`` says. Registering a
    type again replaces its handler. See ``fpgm_ext.pruning.layers`` for the handlers to
    start from (``Conv``, ``Linear``, ``BatchNorm``, ...).

    ``leaf``: torch.fx traces a module of exactly this class as one call, which the
    handler analyses, instead of tracing its forward (its subclasses are traced through
    unless registered themselves: a subclass may add work to the forward)."""
    if not isinstance(handler, Layer):
        raise TypeError(f"fpgm_ext.register_layer: handler must be a fpgm_ext.pruning.layers.Layer, "
                        f"got {type(handler).__name__}")
    if isinstance(layer_type, str):
        if "." not in layer_type:
            raise ValueError(f"fpgm_ext.register_layer: '{layer_type}' is not a module-qualified class name")
        _BY_NAME[layer_type] = handler
        _LEAVES.discard(layer_type)
        if leaf:
            _LEAVES.add(layer_type)
        return
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"fpgm_ext.register_layer: layer_type must be an nn.Module subclass or a "
                        f"class name, got {layer_type!r}")
    _BY_TYPE[layer_type] = handler
    _LEAVES.discard(layer_type)
    if leaf:
        _LEAVES.add(layer_type)


def unregister_layer(layer_type: Union[type, str]) -> None:
    """Forgets what ``register_layer`` taught the pruner about ``layer_type``."""
    (_BY_NAME if isinstance(layer_type, str) else _BY_TYPE).pop(layer_type, None)
    _LEAVES.discard(layer_type)


def handler_for(m) -> Optional[Layer]:
    """The handler of module ``m`` (or of class ``m``): its class's, else the nearest
    base class's along the MRO; a handler registered by name counts for that class."""
    kind = m if isinstance(m, type) else type(m)
    for c in kind.__mro__:
        found = _BY_TYPE.get(c)
        if found is None:
            found = _BY_NAME.get(type_name(c)) if _BY_NAME else None
        if found is not None:
            return found
    return None


def handler_computing(m, rule, call) -> Optional[Layer]:
    """The handler of module ``m`` where its kind follows ``rule`` and a call of that
    rule's op with ``call``'s arguments (``base.LayerCall``) computes what ``m`` does."""
    handler = handler_for(m) if m is not None else None
    return handler if handler is not None and handler.rule == rule and handler.computes(m, call) else None


def rule_of(m) -> Optional[str]:
    """The analysis rule of module ``m``'s layer kind, or None for an unregistered type."""
    handler = handler_for(m)
    return handler.rule if handler is not None else None


def is_leaf(m: nn.Module) -> bool:
    """Whether torch.fx traces ``m`` as one call: its exact class is registered as a leaf."""
    kind = type(m)
    return kind in _LEAVES or (bool(_BY_NAME) and type_name(kind) in _LEAVES)


def registered_handlers() -> list:
    """Every registered handler, by type or by name."""
    return list(_BY_TYPE.values()) + list(_BY_NAME.values())
