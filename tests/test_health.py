"""The training-health monitor: a run known to fail (D wins against a one-channel-wide generator) is flagged while
it goes, and stopped when asked; a healthy tiny run is not flagged."""

import csv

import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dcgan.classifier import train_classifier
from dcgan.config import Paths, TrainParams
from dcgan.data import prepare
from dcgan.ema import Ema
from dcgan.health import Finding, Monitor, mode_collapse
from dcgan.metrics import class_coverage
from dcgan.tracking import tracking_uri
from dcgan.train import train

from .conftest import FIXTURE_DIR

# Measured on the fixture: with G 1 channel wide against D 32 wide at lr 0.002, D's loss falls to 0.05 and
# D(G(z)) to 0.04 by step 57 while G's loss climbs past 3 (0.011, 0.010 and 4.6 at step 96).
LOSING = {"model.g_width": 1, "model.d_width": 32, "train.lr": 0.002, "train.epochs": 12, "train.health_window": 16}


@pytest.fixture
def prepared(project: Paths, tiny) -> Paths:
    prepare(tiny, project)
    train_classifier(tiny, project)
    return project


def _run(prepared: Paths, **overrides):
    from dcgan.config import load_params

    params = load_params(prepared.root / "params.yaml", overrides)
    return params, train(params, prepared)


def test_the_discriminator_winning_is_flagged_while_the_run_goes(prepared: Paths, caplog):
    _, result = _run(prepared, **LOSING, **{"evaluate.every_epochs": 0})
    assert result.steps == 96  # flagged, not stopped
    assert result.health is not None and result.health.startswith("discriminator winning at step ")
    step = int(result.health.split("at step ")[1].split(":")[0])
    assert 32 <= step < 96 and "training looks unhealthy: discriminator winning" in caplog.text
    run = mlflow.MlflowClient(tracking_uri(prepared)).get_run(result.run_id)
    assert run.data.tags["health"] == "discriminator_winning" and "near zero" in run.data.tags["health.evidence"]
    assert run.data.metrics["unhealthy"] == 1


def test_stop_unhealthy_ends_the_run_at_that_epoch_keeping_the_best_generator(prepared: Paths):
    params, result = _run(prepared, **LOSING, **{"train.stop_unhealthy": True})
    step = int(result.health.split("at step ")[1].split(":")[0])
    assert result.steps == -(-step // 8) * 8 < 96  # the end of the epoch it was found in
    assert result.best_step <= result.steps and result.best_fid is not None
    with open(prepared.reports / "losses.csv") as f:
        assert len(list(csv.reader(f))) == 1 + result.steps
    assert (prepared.models / "generator.safetensors").is_file()


def test_a_healthy_tiny_run_is_not_flagged(prepared: Paths):
    _, result = _run(prepared, **{"train.health_window": 4, "train.epochs": 3})
    assert result.health is None
    run = mlflow.MlflowClient(tracking_uri(prepared)).get_run(result.run_id)
    assert run.data.tags["health"] == "healthy" and run.data.metrics["unhealthy"] == 0


def test_mode_collapse_needs_sure_samples_of_few_classes():
    rng = np.random.default_rng(0)
    one_digit = np.full((100, 10), 0.001)
    one_digit[:, 3] = 0.991
    assert "cover 1 of 10 classes" in str(mode_collapse(class_coverage(one_digit), 40))
    even = np.eye(10)[np.arange(100) % 10] * 0.99 + 0.001
    assert mode_collapse(class_coverage(even), 40) is None
    noise = rng.dirichlet(np.ones(10), 100)  # unsure: not digits yet, so not collapse
    noise[:, 3] += 0.2
    assert mode_collapse(class_coverage(noise / noise.sum(1, keepdims=True)), 40) is None


def test_the_average_is_judged_for_collapse_only_once_it_left_the_first_weights():
    ema = Ema(torch.nn.Linear(2, 2), decay=0.999, warmup=500)
    assert not ema.settled(468)  # where the EMA runs of docs/benchmarks.md were flagged
    assert not ema.settled(1499) and ema.settled(1500)


def _replay(recorded: dict[str, torch.Tensor], run: str, window: int, judged_by_fid: bool = True) -> Finding | None:
    """The monitor on a recorded run, fed as `train` feeds it: the losses every log_every (10) steps, the quick FIDs
    at their steps."""
    history, fids = recorded[f"{run}.losses"], {int(s): f for s, f in recorded[f"{run}.fid_quick"].tolist()}
    monitor, best = Monitor(window, judged_by_fid), None
    for step in range(10, len(history) + 1):
        if step % 10 == 0 or step in fids:
            monitor.losses(history, step)
        if step in fids:
            monitor.quick_evaluation(step, fids[step], best, coverage=None)
            best = min(fids[step], best or fids[step])
    return monitor.finding


def test_a_strong_discriminator_in_a_healthy_32x32_run_is_not_taken_for_d_winning():
    """Three real runs of the CPU preset's 32 x 32 (docs/benchmarks.md). Seed 1 and the run with batch 64 improved
    to their end (quick FID 43.3 and 37.1 at their last step), though D's loss and D(G(z)) dipped under the
    thresholds; with a decaying learning rate, D won for good in the last third (D(G(z)) 0.009) and the quick FID
    went from 45.5 to 51.7."""
    recorded = load_file(FIXTURE_DIR.parent / "losses-32x32.safetensors")
    default = TrainParams().health_window
    assert _replay(recorded, "preset_seed1", window=50, judged_by_fid=False)  # the false alarm of a short window
    assert _replay(recorded, "preset_seed1", default, judged_by_fid=False) is None
    assert _replay(recorded, "preset_batch64_seed0", default, judged_by_fid=False)  # a strong D for 300 steps
    assert _replay(recorded, "preset_batch64_seed0", default) is None  # but the quick FID went on improving
    assert _replay(recorded, "preset_seed1", default) is None
    found = _replay(recorded, "preset_lr_decay_seed0", default)
    assert found is not None and found.kind == "discriminator_winning" and found.step > 2106  # after the decay began
    assert "is no better than the best before, 45.52" in found.evidence


def test_a_real_collapse_is_flagged_before_it_happens():
    """A real run that fell apart: the CPU preset with `train.lr=0.0004 train.batch_size=64`, seed 0
    (docs/benchmarks.md). Its quick FID was 41.3-42.6 from step 4,685, then 1,167 at step 7,496 and 1,880 at the end;
    the monitor, fed as in training, names D winning at step 6,050, as the live run did."""
    recorded = load_file(FIXTURE_DIR.parent / "losses-32x32.safetensors")
    found = _replay(recorded, "lr0004_batch64_seed0", TrainParams().health_window)
    assert found is not None and found.kind == "discriminator_winning" and found.step == 6050
    assert "the quick FID at step 6559, 41.79, is no better than the best before, 41.31" in found.evidence
