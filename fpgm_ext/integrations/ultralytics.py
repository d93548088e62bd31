"""Ultralytics YOLO models (detect, segment, pose, OBB) pruned by FPGM in the Ultralytics
workflow: ``prune`` a ``YOLO`` object's model, ``save`` a checkpoint that ``YOLO(path)``
loads with the pruned architecture, fine-tune it with ``YOLO(path).train(...,
trainer=trainer_for(task))`` (Ultralytics' own trainer, which otherwise rebuilds the
unpruned model from the yaml and loads the weights that still fit), then ``predict`` and
``export`` as any YOLO model.

What the pruner knows of the family (``FAMILY``, ../pruning/families.py): the heads return
their input maps as ``"feats"``, which the loss reads for their heights and widths only
(anchor points), so those outputs may lose channels and the neck's widest layers are pruned
too; a C2f-like block's ``self.c`` is refit to its pruned halves.
"""
from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from torch import nn

from ..pruning.families import Family
from ..pruning.outputs import Outputs


def without_feats(out):
    """The outputs of an Ultralytics model but the heads' ``"feats"`` (in either mode)."""
    if isinstance(out, dict):
        return {k: without_feats(v) for k, v in out.items() if k != "feats"}
    if isinstance(out, (list, tuple)):
        return [without_feats(v) for v in out]
    return out


def _conv_out(module) -> Optional[int]:
    conv = getattr(module, "conv", module)
    return getattr(conv, "out_channels", None)


def _halves(m: nn.Module) -> bool:
    """A C2f-like block (C2f, C3k2, C2fAttn, RepNCSPELAN4, C2PSA, ...): its ``cv1`` makes
    ``2 * self.c`` channels, which a forward splits as ``split((self.c, self.c))``."""
    c = getattr(m, "c", None)
    return isinstance(c, int) and not isinstance(c, bool) and _conv_out(getattr(m, "cv1", None)) == 2 * c


def refit(model: nn.Module):
    """Before the surgery: the C2f-like blocks. After it, each one's ``c`` is half its
    ``cv1``'s channels again (pruned in equal halves, as its ``chunk(2, 1)`` needs): the
    ``forward_split`` that Ultralytics' exporter switches to splits by ``self.c``."""
    names = [name for name, m in model.named_modules() if _halves(m)]

    def after(pruned: nn.Module) -> None:
        modules = dict(pruned.named_modules())
        for name in names:
            m = modules[name]
            m.c = _conv_out(m.cv1) // 2

    return after





def _model_of(yolo) -> nn.Module:
    """The ``nn.Module`` of a ``YOLO`` object (itself a module, whose forward predicts),
    or the module given."""
    from ultralytics.engine.model import Model

    model = yolo.model if isinstance(yolo, Model) else yolo
    if not isinstance(model, nn.Module):
        raise TypeError(f"fpgm_ext.integrations.ultralytics: expected a YOLO object or its model, "
                        f"got {type(yolo).__name__}")
    return model


def input_channels(model: nn.Module) -> int:
    """The image channels the model takes (its yaml's ``ch``, else its first conv's)."""
    ch = getattr(model, "yaml", {}).get("ch") if isinstance(getattr(model, "yaml", None), dict) else None
    if ch:
        return int(ch)
    return next(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def prune(yolo, rate_dist: float = 0.3, imgsz: int = 640, **options):
    """``fpgm_ext.prune`` of a YOLO model on one ``imgsz`` x ``imgsz`` image (its analysis
    and exactness checks need one; the pruned model takes any size the original does).
    Returns ``(pruned model, report)``; the model given is untouched (its modes
    included). ``options``: those of ``fpgm_ext.prune``."""
    from .. import prune as _prune

    model = _model_of(yolo)
    x = torch.rand(1, input_channels(model), imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()   # BatchNorm's running statistics, as the model predicts
        pruned, report = _prune(model, x, rate_dist=rate_dist, **options)
    finally:
        for m, flag in modes:
            m.training = flag
    return pruned, report


def save(model: nn.Module, path: Union[str, Path], report=None) -> Path:
    """An Ultralytics checkpoint of the pruned ``model``, which ``YOLO(path)`` loads with the
    pruned architecture (the module is stored whole, in half precision, as Ultralytics'
    own checkpoints are; ``report``'s plan is kept under ``"fpgm_plan"``)."""
    import ultralytics

    model = _model_of(model)
    path = Path(path)
    args = dict(getattr(model, "args", None) or {})
    ckpt = {"model": copy.deepcopy(model).half(), "ema": None, "optimizer": None, "epoch": -1,
            "train_args": args, "date": datetime.datetime.now().astimezone().isoformat(),
            "version": ultralytics.__version__}
    if report is not None:
        ckpt["fpgm_plan"] = report.plan.to_dict()
    torch.save(ckpt, path)
    return path


def trainer_for(task: str):
    """Ultralytics' trainer for ``task`` ("detect", "segment", "pose", "obb"), made to train
    the model it is given (a pruned one) instead of building the yaml's: pass it as
    ``YOLO("pruned.pt").train(data=..., trainer=trainer_for("detect"))``."""
    from ultralytics import YOLO

    tasks = YOLO.task_map.fget(None)
    if task not in tasks:
        raise ValueError(f"fpgm_ext.integrations.ultralytics: unknown task {task!r} "
                         f"(one of {', '.join(sorted(tasks))})")
    return _keeping_model(tasks[task]["trainer"])


def _keeping_model(base):
    class PrunedTrainer(base):
        """``{base}`` training the model it is given, never the one its yaml describes."""

        def get_model(self, cfg=None, weights=None, verbose=True):
            if not isinstance(weights, nn.Module):
                raise ValueError("fpgm_ext: a pruned model's architecture lives in its checkpoint, not in its "
                                 "yaml: train it with pretrained=True (the default)")
            head = weights.model[-1] if isinstance(getattr(weights, "model", None), nn.Sequential) else None
            nc = getattr(head, "nc", None)
            if nc is not None and self.data and self.data.get("nc") not in (None, nc):
                raise ValueError(f"fpgm_ext: the pruned model predicts {nc} classes, the dataset has "
                                 f"{self.data['nc']}: prune a model built for {self.data['nc']} classes")
            model = copy.deepcopy(weights).float()
            if self.data and self.data.get("names"):
                model.names = self.data["names"]
            return model

    PrunedTrainer.__doc__ = PrunedTrainer.__doc__.format(base=base.__name__)
    PrunedTrainer.__name__ = PrunedTrainer.__qualname__ = "Pruned" + base.__name__
    return PrunedTrainer


def finetune(path: Union[str, Path], **train_args):
    """``YOLO(path).train(**train_args)`` with the trainer that keeps the pruned model;
    returns the ``YOLO`` object, holding the best checkpoint after training."""
    from ultralytics import YOLO

    yolo = YOLO(str(path))
    yolo.train(trainer=trainer_for(yolo.task), **train_args)
    return yolo


def load_spec(spec: str) -> Tuple[nn.Module, list, str]:
    """(model, input shape, description) of an Ultralytics model yaml (``yolov8n.yaml``,
    ``yolo11n-seg.yaml``: built, untrained) or checkpoint, for the CLI."""
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    yolo = YOLO(spec)
    model = yolo.model
    return model, [1, input_channels(model), 640, 640], f"Ultralytics {Path(spec).name} ({yolo.task})"


def _saved(model, path, report) -> str:
    save(model, path, report)
    return "ultralytics.YOLO(path)"


FAMILY = Family(
    Outputs(without_feats, "Ultralytics: the heads' 'feats' outputs (read for their shapes only) may lose channels"),
    refit, save=_saved)
