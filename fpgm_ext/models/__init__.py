"""Models to prune: the paper's CIFAR ResNets, and torchvision's when it is installed.

    fpgm_ext.models.cifar_resnet(56)                 # ResNet-56 for CIFAR-10
    fpgm_ext.models.torchvision("resnet50")          # torchvision.models.resnet50(weights=None)
    fpgm_ext.models.get("resnet110") / get("mobilenet_v2", num_classes=10)
"""
from __future__ import annotations

from torch import nn

from ..pruning.layers import PadShortcut
from .cifar_resnet import BasicBlock, CifarResNet, cifar_resnet

__all__ = ["cifar_resnet", "CifarResNet", "BasicBlock", "PadShortcut", "torchvision", "get"]

CIFAR_DEPTHS = (20, 32, 44, 56, 110)


def torchvision(name: str, **kwargs) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, **kwargs)``: untrained, nothing
    downloaded. torchvision is imported here, not with fpgm_ext."""
    try:
        import torchvision as tv
    except ImportError as exc:
        raise ImportError(f"fpgm_ext.models.torchvision('{name}') needs torchvision "
                          "(pip install torchvision matching your torch)") from exc
    kwargs.setdefault("weights", None)
    return tv.models.get_model(name, **kwargs)


def get(name: str, **kwargs) -> nn.Module:
    """A built-in CIFAR ResNet by name ("resnet20", "resnet32", "resnet44", "resnet56",
    "resnet110"), else a torchvision model."""
    if name.startswith("resnet") and name[6:].isdigit() and int(name[6:]) in CIFAR_DEPTHS:
        return cifar_resnet(int(name[6:]), **kwargs)
    return torchvision(name, **kwargs)
