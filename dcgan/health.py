"""Training health: the two classic ways a GAN run fails, noticed while it goes.

- **The discriminator winning.** Over the last `train.health_window` steps D's loss is near zero and D(G(z)) is
  near zero (D tells every fake apart), while G's loss climbs (its mean over the window is above the window's
  before). G then gets no useful gradient, and the run does not recover by itself. But a strong D also comes and
  goes in healthy runs (at 32 x 32, 10% of their 50-step windows look like this; docs/benchmarks.md), so the window
  is long (300 steps), and with a quick FID during training the losses only raise a suspicion: it stands at the
  next quick FID unless that FID is the best so far (G still learning is not a failure).
- **Mode collapse**, at each quick evaluation: the classifier is sure of what the samples show (mean top-1
  probability at least 0.8, so they are not noise), yet they cover at most half the classes, or their class
  histogram is far from uniform (KL to uniform above 1.0; 2.3 is a single class of ten).

The thresholds are fixed here rather than settings: they mark failures, not degrees of quality.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from dcgan.metrics import Coverage

log = logging.getLogger(__name__)

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


class Monitor:
    """The first failure of a run (`finding`), as the training loop feeds it the losses and the quick FIDs."""

    def __init__(self, window: int, judged_by_fid: bool):
        self.window, self.judged_by_fid = window, judged_by_fid
        self.finding: Finding | None = None
        self.suspected: Finding | None = None  # D winning by the losses, waiting for the next quick FID

    def losses(self, history: torch.Tensor, step: int) -> Finding | None:
        """A new finding from the per-step losses of steps 1..step, or None."""
        if self.finding or self.suspected or not (found := discriminator_winning(history, step, self.window)):
            return None
        if self.judged_by_fid:
            self.suspected = found
            return None
        self.finding = found
        return found

    def quick_evaluation(
        self, step: int, fid: float, best_before: float | None, coverage: Coverage | None
    ) -> Finding | None:
        """A new finding at a quick evaluation: a suspicion that G stopped improving confirms, or mode collapse
        (`coverage` None: not judged). `best_before`: the best quick FID before this one."""
        suspected, self.suspected = self.suspected, None
        if self.finding:
            return None
        if suspected and (best_before is None or fid >= best_before):
            before = f"the best before, {best_before:.4g}" if best_before is not None else "no quick FID before it"
            evidence = f"{suspected.evidence}; the quick FID at step {step}, {fid:.4g}, is no better than {before}"
            self.finding = Finding(suspected.kind, suspected.step, evidence)
        elif suspected:
            log.info("%s: not a failure, the quick FID improved to %.4g at step %d", suspected, fid, step)
        if not self.finding and coverage:
            self.finding = mode_collapse(coverage, step)
        return self.finding
