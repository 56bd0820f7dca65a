"""Split mechanics for sequential models: any model that is an ordered list of stages.

A model qualifies if it is an ``nn.Sequential`` or has a ``stages`` attribute (an ``nn.Sequential``
or ``nn.ModuleList``) and its forward applies the stages in order, nothing else. Cut ``k`` puts the
first ``k`` stages on the edge (the head) and the rest in the cloud (the tail): cut 0 sends the raw
input, cut ``len(stages)`` runs everything on the edge and sends the output. Head and tail share
the model's modules (no copies), so ``tail(head(x))`` runs exactly the model's operations in the
model's order and equals ``model(x)`` bit for bit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


def stages_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's stages in order, as (name, module) pairs; ``TypeError`` if it has none."""
    stages = model if isinstance(model, nn.Sequential) else getattr(model, "stages", None)
    if not isinstance(stages, nn.Sequential | nn.ModuleList):
        raise TypeError(f"{type(model).__name__} is not sequential: it is no nn.Sequential and has no "
                        "`stages` (nn.Sequential or nn.ModuleList)")
    return list(stages.named_children())


def cut_points(model: nn.Module) -> list[int]:
    """Every cut of the model: ``0`` (all in the cloud) to ``len(stages)`` (all on the edge)."""
    return list(range(len(stages_of(model)) + 1))


def check_cut(model: nn.Module, cut: int) -> int:
    """``cut`` if it is one of ``cut_points(model)``, else ``ValueError``."""
    count = len(stages_of(model))
    if not 0 <= cut <= count:
        raise ValueError(f"cut {cut} is outside [0, {count}] for a model of {count} stages")
    return cut


def split(model: nn.Module, cut: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(head, tail): stages ``[0, cut)`` and ``[cut, len)``, sharing the model's modules.

    An empty side is an empty ``nn.Sequential``, which returns its input unchanged.
    """
    stages = stages_of(model)
    check_cut(model, cut)
    return nn.Sequential(OrderedDict(stages[:cut])), nn.Sequential(OrderedDict(stages[cut:]))


@dataclass(frozen=True)
class CutInfo:
    """The tensor that crosses the link at one cut, for one sample."""

    cut: int
    after: str  # name of the last stage on the edge ("input" at cut 0)
    shape: tuple[int, ...]  # per sample, batch dimension dropped
    dtype: torch.dtype
    edge_params: int  # parameters of the head
    cloud_params: int  # parameters of the tail

    @property
    def numel(self) -> int:
        """Elements per sample."""
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def bytes(self) -> int:
        """Bytes per sample at the tensor's own dtype (no codec)."""
        return self.numel * self.dtype.itemsize


def _params(modules: Iterable[nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@torch.no_grad()
def cut_profile(model: nn.Module, example: torch.Tensor) -> list[CutInfo]:
    """Shape, dtype and bytes of the tensor at every cut, from one forward of ``example`` (B, ...)."""
    stages = stages_of(model)
    was_training = model.training
    model.eval()
    try:
        infos, hidden = [], example
        for cut in range(len(stages) + 1):
            if cut:
                hidden = stages[cut - 1][1](hidden)
            infos.append(CutInfo(cut=cut, after=stages[cut - 1][0] if cut else "input",
                                 shape=tuple(hidden.shape[1:]), dtype=hidden.dtype,
                                 edge_params=_params(m for _, m in stages[:cut]),
                                 cloud_params=_params(m for _, m in stages[cut:])))
    finally:
        model.train(was_training)
    return infos
