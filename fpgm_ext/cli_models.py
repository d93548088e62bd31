"""What the ``fpgm-ext`` command line prunes: a built-in name, a torchvision model name, a
saved ``.pt`` module, an Ultralytics yaml or checkpoint (where ultralytics is installed),
or a local Hugging Face model directory (config and weights; nothing is downloaded); the
input it prunes on, how it saves the result, and ``CliError``, the error it prints as one
line."""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import List, Optional


class CliError(Exception):
    """A user-facing error: its message is printed as one line."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


BUILTIN = re.compile(r"^(?:cifar_)?resnet(\d+)$")


def builtin_names() -> List[str]:
    from .models import CIFAR_DEPTHS

    return [f"cifar_resnet{d}" for d in CIFAR_DEPTHS]


def _torchvision_names() -> List[str]:
    try:
        import torchvision
    except ImportError:
        return []
    return list(torchvision.models.list_models())


def load_model(spec: str, num_classes: Optional[int] = None):
    """(model, default input shape, description) for a built-in name, a torchvision model
    name, a saved ``.pt`` file (a whole pickled module) or an Ultralytics yaml or checkpoint."""
    import torch
    from torch import nn

    from . import models

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        return _hf_dir(path)
    if _ultralytics_spec(spec):
        from .integrations import ultralytics

        return ultralytics.load_spec(spec)
    if spec.endswith((".pt", ".pth")) or path.exists() or os.sep in spec:
        if not path.is_file():
            raise CliError(f"cannot read '{spec}': no such file")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise CliError(f"cannot read '{spec}': not a file saved by torch.save "
                           f"({type(exc).__name__}: {_first_line(exc)})") from None
        if isinstance(obj, dict):
            raise CliError(f"'{spec}' holds a dict (a state_dict?), not a model: save the module "
                           "itself, torch.save(model, path), or name its architecture instead")
        if not isinstance(obj, nn.Module):
            raise CliError(f"'{spec}' holds a {type(obj).__name__}, not a torch.nn.Module")
        shape = [1, 3, 32, 32] if isinstance(obj, models.CifarResNet) else None
        return obj, shape, f"{type(obj).__name__} from {spec}"
    m = BUILTIN.match(spec)
    if m and (spec.startswith("cifar_") or int(m.group(1)) in models.CIFAR_DEPTHS):
        return models.cifar_resnet(int(m.group(1)), **kwargs), [1, 3, 32, 32], f"CIFAR ResNet-{m.group(1)}"
    names = _torchvision_names()
    if spec in names:
        return models.torchvision(spec, **kwargs), [1, 3, 224, 224], f"torchvision {spec} (untrained)"
    close = difflib.get_close_matches(spec, builtin_names() + names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    tv = "a torchvision model name" if names else "a torchvision model name (torchvision is not installed)"
    raise CliError(f"unknown model '{spec}': not a built-in ({', '.join(builtin_names())}), {tv}, "
                   f"or a .pt file{hint}")


def _ultralytics_spec(spec: str) -> bool:
    """An Ultralytics model yaml (``yolov8n.yaml``: Ultralytics finds its own by name) or
    checkpoint (a dict holding the module under "model"), where ultralytics is installed."""
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None:
        return False
    if spec.endswith((".yaml", ".yml")):
        return True
    if not (spec.endswith(".pt") and Path(spec).is_file()):
        return False
    import torch

    try:
        obj = torch.load(spec, map_location="cpu", weights_only=False)
    except Exception:   # noqa: BLE001 - load_model says why
        return False
    return isinstance(obj, dict) and "model" in obj and type(obj["model"]).__module__.startswith("ultralytics.")


def _hf_dir(path: Path):
    """A Hugging Face model saved with ``save_pretrained`` (or by ``fpgm-ext prune``), its
    default input: 16 token ids, or an image of the config's size."""
    try:
        from .integrations import transformers as ft

        model = ft.load(path)
    except ImportError:
        raise CliError(f"'{path}' is a Hugging Face model directory: pip install transformers") from None
    except Exception as exc:
        raise CliError(f"cannot load '{path}' ({type(exc).__name__}: {_first_line(exc)})") from None
    return model, list(ft.example_inputs(model)[0].shape), f"{type(model).__name__} from {path}"


def example_input(model, shape):
    """The input ``prune`` runs ``model`` on: token ids for a language model, else noise."""
    import torch

    if getattr(model, "main_input_name", None) == "input_ids":
        vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 2
        return torch.randint(0, vocab, tuple(shape))
    return torch.randn(*shape)


def save_pruned(pruned, out: str, report) -> str:
    """Saves the pruned model as its family loads it (``Family.save``: Ultralytics'
    checkpoint, a transformers directory), else the whole module; says how to load it."""
    from .pruning.families import family_of

    save = family_of(pruned).save
    if save is not None:
        return f"saved the pruned model to {out} ({save(pruned, out, report)})"
    import torch

    torch.save(pruned, out)
    return f"saved the pruned model to {out} (torch.load(path, weights_only=False))"


def attention_modules(model) -> List[str]:
    """The attention modules of a transformers model (``--no-heads`` leaves them whole)."""
    if not (type(model).__module__ or "").startswith("transformers."):
        return []
    from .integrations import hf_blocks

    return [a.name for a in hf_blocks.find_attention(model)]
