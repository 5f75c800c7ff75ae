"""An exponential moving average of the generator's weights: StyleGAN's G_ema, the lever of Yazici et al.,
"The Unusual Effectiveness of Averaging in GAN Training" (ICLR 2019).

After every step, ema = decay * ema + (1 - decay) * G. During `train.ema_warmup` steps the decay ramps up as
decay ** (warmup / step): the average covers a horizon that grows linearly from nothing to its full 1 / (1 - decay)
steps, so the early, poor weights are forgotten fast. BatchNorm's running statistics are copied from G as they are,
but they belong to other weights: everything that measures or exports the average re-estimates them first
(`export.bn_recalibration_batches`, which must be > 0 with EMA on).
"""

from __future__ import annotations

import copy
from typing import Generic, TypeVar

import torch
from torch import nn

Net = TypeVar("Net", bound=nn.Module)


class Ema(Generic[Net]):
    def __init__(self, net: Net, decay: float, warmup: int):
        self.module = copy.deepcopy(net).requires_grad_(False)
        self.decay, self.warmup = decay, warmup

    def settled(self, step: int) -> bool:
        """Whether the average has left the first weights behind: a full horizon after the warm-up. Before that
        it is a blur of early generators, which the training-health monitor must not take for mode collapse."""
        return step >= self.warmup + round(1 / (1 - self.decay))

    def decay_at(self, step: int) -> float:
        """The decay of the update after `step` steps (1, 2, ...)."""
        return self.decay ** (self.warmup / step) if step < self.warmup else self.decay

    @torch.no_grad()
    def update(self, net: Net, step: int) -> None:
        weight = 1 - self.decay_at(step)
        for averaged, live in zip(self.module.parameters(), net.parameters(), strict=True):
            averaged.lerp_(live, weight)
        for averaged_buffer, live_buffer in zip(self.module.buffers(), net.buffers(), strict=True):
            averaged_buffer.copy_(live_buffer)
