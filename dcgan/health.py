"""Training health: the two classic ways a GAN run fails, noticed while it goes.

- **The discriminator winning.** Over the last `train.health_window` steps D's loss is near zero and D(G(z)) is
  near zero (D tells every fake apart), while G's loss climbs (its mean over the window is above the window's
  before). G then gets no useful gradient, and the run does not recover by itself.
- **Mode collapse**, at each quick evaluation: the classifier is sure of what the samples show (mean top-1
  probability at least 0.8, so they are not noise), yet they cover at most half the classes, or their class
  histogram is far from uniform (KL to uniform above 1.0; 2.3 is a single class of ten).

The thresholds are fixed here rather than settings: they mark failures, not degrees of quality.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dcgan.metrics import Coverage

LOSS_D_MAX = 0.1  # "near zero": a healthy DCGAN's D loss stays around 0.3-1.4
D_FAKE_MAX = 0.05  # mean D(G(z)): D calls fewer than one fake in twenty real
SURE = 0.8  # mean top-1 probability above which the samples are recognisable, not noise
COLLAPSED_KL = 1.0


@dataclass(frozen=True)
class Finding:
    kind: str  # "discriminator_winning" or "mode_collapse"
    step: int
    evidence: str

    def __str__(self) -> str:
        return f"{self.kind.replace('_', ' ')} at step {self.step}: {self.evidence}"


def discriminator_winning(history: torch.Tensor, step: int, window: int) -> Finding | None:
    """`history`: the per-step (loss_d, loss_g, d_real, d_fake) of steps 1..step in rows 0..step-1."""
    if window == 0 or step < 2 * window:
        return None
    before, last = history[step - 2 * window : step - window], history[step - window : step]
    loss_d, loss_g, _, d_fake = last.mean(0).tolist()
    loss_g_before = before[:, 1].mean().item()
    if loss_d < LOSS_D_MAX and d_fake < D_FAKE_MAX and loss_g > loss_g_before:
        return Finding(
            "discriminator_winning",
            step,
            f"over the last {window} steps D's loss {loss_d:.3g} and D(G(z)) {d_fake:.3g} are near zero while G's "
            f"loss climbed from {loss_g_before:.3g} to {loss_g:.3g}",
        )
    return None


def mode_collapse(coverage: Coverage, step: int) -> Finding | None:
    n_classes = len(coverage.histogram)
    few = coverage.digits_covered <= n_classes // 2
    if coverage.confidence >= SURE and (few or coverage.class_kl > COLLAPSED_KL):
        return Finding(
            "mode_collapse",
            step,
            f"the samples cover {coverage.digits_covered} of {n_classes} classes (class KL to uniform "
            f"{coverage.class_kl:.3g}) with the classifier {coverage.confidence:.0%} sure of them",
        )
    return None
