"""Evaluation: how good are the generated images, measured with the data set's own classifier.

The generator is evaluated as it will be exported: eval mode, BatchNorm with its running statistics.

    models/generator.safetensors, models/classifier.safetensors, data/prepared/
        -> reports/metrics.json, reports/{samples,digits,interpolation,class_histogram}.png
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch

from dcgan import metrics, tracking
from dcgan.classifier import Classifier, embed, load_classifier
from dcgan.config import EvaluateParams, Params, Paths
from dcgan.data import load_prepared, prepared_info
from dcgan.files import atomic_path, read_json_number, write_json_atomic
from dcgan.models import Generator, load_generator, recalibrate_batchnorm, sample
from dcgan.pictures import sample_grid, save_png, tile

log = logging.getLogger(__name__)

GENERATOR_MODE = "eval mode, BatchNorm statistics re-estimated as for the export"


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict[str, float]


def generator_as_exported(params: Params, paths: Paths) -> Generator:
    """The saved generator with its BatchNorm statistics re-estimated (export.bn_recalibration_batches): the
    network `export` writes to ONNX, in eval mode."""
    channels = prepared_info(paths, params.data).channels
    generator = load_generator(paths.models / "generator.safetensors", params.model, params.data.image_size, channels)
    return as_exported(generator, params)


def as_exported(generator: Generator, params: Params) -> Generator:
    batches = params.export.bn_recalibration_batches
    return recalibrate_batchnorm(generator, batches, params.train.batch_size, params.seed)


def generate(generator: Generator, n: int, seed: int) -> torch.Tensor:
    """n samples of G in eval mode from seeded latents: N x C x S x S on the CPU."""
    return sample(generator, torch.randn(n, generator.z_dim, 1, 1, generator=torch.Generator().manual_seed(seed)))


def measure(classifier: Classifier, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's (features N x 128, class probabilities N x classes) of `images`, float64 arrays."""
    features, probs = embed(classifier, images)
    return features.double().cpu().numpy(), probs.double().cpu().numpy()


def quality(
    features: np.ndarray,
    probs: np.ndarray,
    reference: np.ndarray,
    cfg: EvaluateParams,
    seed: int,
    labelled: bool = True,
) -> dict[str, float]:
    """All metrics of one sample set (its classifier features and probabilities) against the reference features.

    Without labels (`labelled` false: the classifier predicts rotations) there are no classes, so no Inception
    Score and no class coverage: only the feature metrics.
    """
    precision, recall = metrics.precision_recall(reference, features)
    results = {
        "fid": metrics.fid(reference, features),
        "kid": metrics.kid(reference, features, cfg.kid_subset_size, seed=seed),
        "precision": precision,
        "recall": recall,
    }
    if labelled:
        coverage = metrics.class_coverage(probs)
        results |= {
            "inception_score": metrics.inception_score(probs),
            "digits_covered": coverage.digits_covered,
            "class_kl": coverage.class_kl,
            "confidence": coverage.confidence,
        }
    return results


class FidTracker:
    """The FID of a generator on a fixed latent batch against the test set, cheap enough to run each epoch.

    It measures the generator as it would be exported (a copy, BatchNorm statistics re-estimated) unless told
    `as_is`.
    """

    def __init__(self, params: Params, paths: Paths, device: torch.device):
        self.classifier = load_classifier(paths.models / "classifier.safetensors").to(device)
        test_images, _ = load_prepared(paths, "test", params.data, device=device)
        self.reference = measure(self.classifier, test_images)[0]
        self.params = params

    def __call__(self, generator: Generator, as_is: bool = False) -> float:
        return self.quick(generator, as_is)[0]

    def quick(self, generator: Generator, as_is: bool = False) -> tuple[float, metrics.Coverage | None]:
        """The quick FID and the class coverage of the same samples (None for data without labels)."""
        device = next(self.classifier.parameters()).device
        measured = generator if as_is else as_exported(copy.deepcopy(generator), self.params)
        fake = generate(measured, self.params.evaluate.quick_samples, self.params.seed).to(device)
        features, probs = measure(self.classifier, fake)
        coverage = metrics.class_coverage(probs) if self.classifier.task == "labels" else None
        return metrics.fid(self.reference, features), coverage


def evaluate(params: Params, paths: Paths) -> EvaluateResult:
    """Metrics of the generator and, beside them, of real training images: the reference ceiling."""
    cfg = params.evaluate
    generator = generator_as_exported(params, paths)
    classifier = load_classifier(paths.models / "classifier.safetensors")
    test_images, _ = load_prepared(paths, "test", params.data)
    train_images, _ = load_prepared(paths, "train", params.data, limit=cfg.n_samples)
    reference, reference_probs = measure(classifier, test_images)

    labelled = classifier.task == "labels"
    fake = generate(generator, cfg.n_samples, params.seed)
    fake_features, fake_probs = measure(classifier, fake)
    results = quality(fake_features, fake_probs, reference, cfg, params.seed, labelled)
    real = quality(*measure(classifier, train_images), reference, cfg, params.seed, labelled)
    results.update({f"real_{name}": value for name, value in real.items()})
    results["classifier_accuracy"] = read_json_number(
        paths.reports / "classifier.json", "classifier_accuracy", "classifier"
    )
    write_json_atomic(paths.reports / "metrics.json", results)

    distance = None if labelled else nearest_real_distance(fake_features, reference)
    pictures = save_pictures(
        generator, fake, fake_probs, reference_probs, classifier.classes, params, paths.reports, distance
    )
    with tracking.pipeline_run(paths):
        mlflow.log_metrics({f"eval_{name}": value for name, value in results.items()})
        mlflow.set_tag("eval.generator_mode", GENERATOR_MODE)
        for picture in pictures:
            mlflow.log_artifact(str(picture), artifact_path="evaluation")
    log.info("%s (generator in %s): %s", paths.reports / "metrics.json", GENERATOR_MODE, results)
    return EvaluateResult(results)


def nearest_real_distance(fake: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Each sample's feature distance to the nearest real image's: how real it looks, without classes."""
    fake_t, real_t = torch.from_numpy(fake), torch.from_numpy(real)
    return torch.cat([torch.cdist(part, real_t).min(1).values for part in fake_t.split(2048)]).numpy()


def save_pictures(
    generator: Generator,
    fake: torch.Tensor,
    fake_probs: np.ndarray,
    real_probs: np.ndarray,
    classes: list[str],
    params: Params,
    reports: Path,
    real_distance: np.ndarray | None = None,
) -> list[Path]:
    """A sample grid, the samples by class (digits.png), a latent interpolation and the class histogram.

    Without labels (`real_distance` given: each sample's feature distance to the nearest real image) digits.png
    holds the 100 samples nearest to real images, best first, and the histogram is of the rotations the
    classifier sees in generated and real images (real ones are upright: 0°).
    """
    samples = reports / "samples.png"
    z = torch.randn(64, generator.z_dim, 1, 1, generator=torch.Generator().manual_seed(params.seed))
    save_png(sample_grid(generator, z), samples)

    if real_distance is not None:  # no classes: the 100 samples nearest to real images, ten a row
        best = torch.from_numpy(real_distance).argsort()[:100]
        rows = torch.full((100, *fake.shape[1:]), -1.0)
        rows[: len(best)] = fake[best]
        rows = rows.view(10, 10, *fake.shape[1:])
    else:  # row c: the ten samples the classifier most confidently calls class c (blank where there are fewer)
        confidence, predicted = torch.from_numpy(fake_probs).max(1)
        rows = torch.full((len(classes), 10, *fake.shape[1:]), -1.0)
        for c in range(len(classes)):
            chosen = (predicted == c).nonzero().flatten()
            best = chosen[confidence[chosen].argsort(descending=True)[:10]]
            rows[c, : len(best)] = fake[best]
    digits = reports / "digits.png"
    save_png(tile(rows.flatten(0, 1), nrow=10), digits)

    # Eight straight lines through latent space, ten steps each.
    ends = torch.randn(2, 8, generator.z_dim, 1, 1, generator=torch.Generator().manual_seed(params.seed + 1))
    weights = torch.linspace(0, 1, 10).view(1, 10, 1, 1, 1)
    line = ends[0].unsqueeze(1) * (1 - weights) + ends[1].unsqueeze(1) * weights  # 8 x 10 x z x 1 x 1
    interpolation = reports / "interpolation.png"
    save_png(sample_grid(generator, line.flatten(0, 1), nrow=10), interpolation)

    histogram = reports / "class_histogram.png"
    generated, real = (metrics.class_coverage(p).histogram for p in (fake_probs, real_probs))
    _bar_chart(generated, real, classes, histogram)
    return [samples, digits, interpolation, histogram]


def _bar_chart(generated: list[float], real: list[float], classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(classes)), 3.5))
    positions = np.arange(len(classes))
    ax.bar(positions - 0.2, generated, width=0.4, label="generated")
    ax.bar(positions + 0.2, real, width=0.4, label="real (test set)")
    ax.axhline(1 / len(classes), color="grey", linewidth=0.8, linestyle="--")
    ax.set(xticks=positions, xlabel="predicted class", ylabel="share of samples", title="Class histogram")
    short = max(map(len, classes)) <= 2  # digits and kana fit under their bars; class names are tilted
    ax.set_xticklabels(classes, rotation=0 if short else 45, ha="center" if short else "right")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
