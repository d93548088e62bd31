"""Soft FPGM pruning during training: the paper's procedure, as its official code runs it.

    soft = fpgm_ext.SoftFPGM(model, rate_dist=0.4)    # selects and zeroes the pruned filters now
    for epoch in range(epochs):
        train_one_epoch(model, optimizer)             # the user's loop, unchanged
        soft.step()                                   # re-selects and re-zeroes every `every` epochs
    pruned = soft.finalize()                          # physically smaller, same outputs

The official code (``pruning_cifar10.py`` of he-y/filter-pruning-geometric-median) does:
select and zero before the first epoch (``init_mask``, ``do_mask``, ``do_similar_mask``);
multiply the gradients of the masked weights by the mask after every ``backward`` and
before every ``optimizer.step`` (``do_grad_mask``); and after each epoch ``e`` with
``e % epoch_prune == 0`` (or the last one) select again on the current weights and zero.
A filter zeroed once may be chosen to stay at the next selection and grow back ("soft").

Differences, on purpose:

- Selection is per channel *group*, exactly as ``fpgm_ext.prune`` does it (the group's
  members scored together; see ``prune``), not per conv layer: then ``finalize()`` can
  remove the channels physically. For a plain chain of convs every group is one conv and
  the selection is the official one.
- Zeroed per pruned channel: the filter and bias of each conv/linear producing it *and*
  the weight and bias of the BatchNorm (and PReLU) on it (``fpgm_ext.pruning.pruned_masks``).
  The official code zeroes conv weights only, so its BatchNorm keeps adding its bias to a
  "pruned" channel and the masked network is not the pruned one; here the masked model and
  the physically pruned model compute the same outputs. Gradients of all these tensors are
  masked.
- Gradients are masked by hooks on the parameters (``Tensor.register_hook``), so no change
  to the training loop is needed, any optimiser works, and under DistributedDataParallel the
  masked gradients are the ones averaged.
- ``keep_zero=True`` (default) re-zeroes the masked tensors after every optimiser step:
  with a zero gradient, SGD momentum left over from before a filter was masked (and
  decoupled weight decay, Adam's moments) would otherwise move it off zero until the next
  selection, as happens in the official code. With ``keep_zero=False`` the official
  behaviour is kept (gradients masked, weights re-zeroed only at each selection and by
  ``finalize()``).

Under DistributedDataParallel (pass the DDP module or its ``.module``) every rank must
call the constructor, ``step()``, ``select()`` and ``finalize()`` together: the selection
is made on rank 0 and broadcast (``broadcast=True``, the default when torch.distributed is
initialised with more than one process), so every rank applies the same masks even if its
weights differed in the last bits, and ``finalize()`` first copies rank 0's parameters and
buffers (BatchNorm running statistics differ per rank after the last step) to every rank, so
all ranks build the same pruned model.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ._checks import check_prune_args
from .pruning import analyse, apply_plan, make_plan, pruned_masks
from .pruning.plan import Plan

__all__ = ["SoftFPGM"]


def _unwrap(model: nn.Module) -> nn.Module:
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def _mask_grad(pruned: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return grad.masked_fill(pruned, 0)


class SoftFPGM:
    """FPGM soft pruning of ``model`` while it trains (see the module docstring).

    Args:
        model: the model, or its DistributedDataParallel / DataParallel wrapper.
        rate_dist, rate_norm, metric: as ``fpgm_ext.prune`` (FPGM-only 40 %:
            ``rate_dist=0.4``; FPGM-mix: ``rate_norm=0.9, rate_dist=0.3``).
        every: select again every this many epochs (the official ``epoch_prune``):
            ``step()`` after epoch ``e`` (counting from 0) re-selects when ``e % every == 0``.
        example_inputs: as ``prune``: needed when torch.fx cannot trace the model and to
            prune a Linear layer inside the network. The model is traced once, here.
        optimizer: where to hook the re-zeroing of ``keep_zero`` (its step post-hook);
            None hooks every optimiser that steps one of the masked parameters.
        keep_zero: re-zero the masked tensors after every optimiser step (default), or
            only at each selection as the official code does (False).
        broadcast: decide the selection on rank 0 and broadcast it; default: when
            torch.distributed is initialised with more than one process.
        process_group: the group to broadcast in (default: the world).
        ignore, prune_residual, min_channels, round_to, trace, ops: as ``prune``.

    Attributes: ``plan`` (the current ``Plan``; ``plan.groups[i]["kept"]``), ``masks``
    (parameter name -> bool ``[N]``, True = kept), ``epoch`` (calls of ``step()`` so far,
    or the next epoch index), ``selections`` (how many selections were made).
    """

    def __init__(self, model: nn.Module, rate_dist: float, rate_norm: float = 1.0, metric: str = "l2",
                 every: int = 1, *, example_inputs=None, optimizer: Optional[torch.optim.Optimizer] = None,
                 keep_zero: bool = True, broadcast: Optional[bool] = None, process_group=None,
                 ignore: Union[str, Sequence[str]] = (), prune_residual: bool = True,
                 min_channels: int = 1, round_to: int = 1, trace: str = "auto", ops=None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"fpgm_ext.SoftFPGM: every must be an integer >= 1 (epochs), got {every!r}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError("fpgm_ext.SoftFPGM: optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.model = model
        self.module = _unwrap(model)
        self.every = every
        self.keep_zero = keep_zero
        self.process_group = process_group
        if broadcast is None:
            broadcast = (torch.distributed.is_available() and torch.distributed.is_initialized()
                         and torch.distributed.get_world_size(process_group) > 1)
        self.broadcast = bool(broadcast)
        self._options = dict(example_inputs=example_inputs, rate_dist=rate_dist, rate_norm=rate_norm,
                             metric=metric, ignore=ignore, prune_residual=prune_residual,
                             min_channels=min_channels, round_to=round_to, trace=trace, ops=ops)
        try:   # the arguments, checked as prune checks them, before the trace
            inputs, _ = check_prune_args(self.module, example_inputs, rate_dist, rate_norm, metric, ignore,
                                         min_channels, round_to, trace)
        except (ValueError, TypeError) as exc:
            raise type(exc)(str(exc).replace("fpgm_ext.prune:", "fpgm_ext.SoftFPGM:")) from None
        self._analysis = analyse(self.module, inputs, trace)    # traced once, kept
        self.plan: Optional[Plan] = None
        self.masks: Dict[str, torch.Tensor] = {}
        self._pruned: Dict[str, torch.Tensor] = {}    # name -> bool, broadcastable to the tensor
        self._params = dict(self.module.named_parameters())
        self._handles: List = []
        self._hooked: set = set()
        self.epoch = 0
        self.selections = 0
        self._closed = False
        if keep_zero:
            if optimizer is not None:
                self._handles.append(optimizer.register_step_post_hook(self._after_step))
            else:
                self._handles.append(register_optimizer_step_post_hook(self._after_step))
        self.select()

    # ------------------------------------------------------------------ selection
    def _decide(self) -> Plan:
        return make_plan(self.module, analysis=self._analysis, **self._options)

    def select(self) -> Plan:
        """Selects the pruned channels on the current weights (per group, as ``prune``)
        and zeroes them; under ``broadcast``, rank 0 decides and every rank applies its
        choice. Called by the constructor and by ``step()``; call it before ``finalize()``
        to re-select on the final weights, as the official code does after its last epoch."""
        self._check_open("select")
        if self.broadcast:
            import torch.distributed as dist

            src = dist.get_global_rank(self.process_group, 0) if self.process_group is not None else 0
            mine = self._decide().to_dict() if dist.get_rank() == src else None
            box = [mine]
            dist.broadcast_object_list(box, src=src, group=self.process_group)
            plan = Plan.from_dict(box[0])
        else:
            plan = self._decide()
        self._set_masks(pruned_masks(self.module, plan))
        self.plan = plan
        self.selections += 1
        self.apply_masks()
        return plan

    def _set_masks(self, keep: Dict[str, torch.Tensor]) -> None:
        # A tensor masked before but not now (possible only where a PadShortcut constraint
        # frees a group for one selection) gets an all-True mask: its hook stays harmless.
        for name in self._pruned:
            if name not in keep:
                keep[name] = torch.ones_like(self._pruned[name]).reshape(
                    -1 if self._pruned[name].shape[1:].numel() == 1 else self._pruned[name].shape)
        for name, k in keep.items():
            p = self._params.get(name)
            if p is None:
                raise RuntimeError(f"fpgm_ext.SoftFPGM: {name} is not a parameter of the model")
            # (a mask of several dims: a tensor pruned along another dim than its first, shaped
            # to broadcast along it, as plan.pruned_masks gives it)
            pruned = (~k if k.dim() > 1 else (~k).reshape((-1,) + (1,) * (p.dim() - 1))).to(p.device)
            if name in self._pruned:
                self._pruned[name].copy_(pruned)        # the hook holds this tensor
            else:
                self._pruned[name] = pruned
                if p.requires_grad:
                    self._handles.append(p.register_hook(functools.partial(_mask_grad, pruned)))
                self._hooked.add(id(p))
            self.masks[name] = k.to(p.device)

    def apply_masks(self) -> None:
        """Zeroes the masked tensors (in place, no autograd)."""
        with torch.no_grad():
            for name, pruned in self._pruned.items():
                self._params[name].masked_fill_(pruned, 0)

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self._closed:
            return
        stepped = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not stepped & self._hooked:
            return
        with torch.no_grad():
            for name, pruned in self._pruned.items():
                p = self._params[name]
                if id(p) in stepped:
                    p.masked_fill_(pruned, 0)

    # ---------------------------------------------------------------------- epochs
    def step(self, epoch: Optional[int] = None) -> bool:
        """Call once at the end of every epoch. After epoch ``e`` (``epoch``, default: the
        number of earlier calls) the pruned channels are selected again and zeroed when
        ``e % every == 0``, as the official code's ``epoch_prune``. Returns whether it did."""
        self._check_open("step")
        e = self.epoch if epoch is None else int(epoch)
        due = e % self.every == 0
        if due:
            self.select()
        self.epoch = e + 1
        return due

    # -------------------------------------------------------------------- the end
    def finalize(self, inplace: bool = False) -> nn.Module:
        """The physically pruned model (``fpgm_ext.apply_plan`` of the current plan on the
        masked model), whose outputs equal the masked model's. Removes the hooks; the
        original model is left masked (and is pruned itself with ``inplace=True``). Under
        DDP, the plain pruned module (wrap it again to go on training); with ``broadcast``
        every rank first takes rank 0's parameters and buffers (BatchNorm statistics, which
        DDP syncs only at the next forward), so all ranks return the same model."""
        self._check_open("finalize")
        if self.broadcast:
            self._sync_from_rank0()
        self.apply_masks()
        self.remove()
        return apply_plan(self.module, self.plan, inplace=inplace, ops=self._options["ops"])

    def _sync_from_rank0(self) -> None:
        """Rank 0's parameters and buffers on every rank: DDP keeps the parameters equal but
        syncs buffers (BatchNorm running statistics) only at the start of a forward, so after
        the last training step each rank holds the statistics of its own data."""
        import torch.distributed as dist

        src = dist.get_global_rank(self.process_group, 0) if self.process_group is not None else 0
        with torch.no_grad():
            for t in list(self.module.parameters()) + list(self.module.buffers()):
                dist.broadcast(t.data, src=src, group=self.process_group)

    def remove(self) -> None:
        """Removes the gradient and optimiser hooks (masks stay applied)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._hooked.clear()
        self._closed = True

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"fpgm_ext.SoftFPGM.{what}: already finalized or removed")

    def __repr__(self) -> str:
        o = self._options
        kept = [g for g in (self.plan.groups if self.plan else []) if g["kept"] is not None]
        return (f"SoftFPGM(rate_dist={o['rate_dist']}, rate_norm={o['rate_norm']}, metric='{o['metric']}', "
                f"every={self.every}, groups pruned={len(kept)}, masked tensors={len(self._pruned)}, "
                f"epoch={self.epoch})")
