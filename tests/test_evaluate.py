"""Calibration of the evaluation: the metrics must tell real digits, noise and a collapsed generator apart.

Uses tests/fixtures/classifier.safetensors, made by `dcgan classifier` on all of MNIST (see fixtures/mnist/README.md).
"""

import gzip

import numpy as np
import pytest
import torch

from dcgan import metrics
from dcgan.classifier import load_classifier, predict
from dcgan.config import EvaluateParams
from dcgan.data.idx import parse_idx
from dcgan.data.prepare import resize_uint8, unit_range
from dcgan.evaluate import measure, quality

from .conftest import FIXTURE_DIR

CFG = EvaluateParams(n_samples=256, kid_subset_size=100)


def _fixture(name: str) -> np.ndarray:
    return parse_idx(gzip.decompress((FIXTURE_DIR / f"{name}.gz").read_bytes()), name, 3 if "images" in name else 1)


@pytest.fixture(scope="module")
def classifier():
    return load_classifier(FIXTURE_DIR.parent / "classifier.safetensors")


@pytest.fixture(scope="module")
def real():
    """(train images 512, train labels, test images 256, test labels) at 64 x 64 in [-1, 1]."""
    return (
        unit_range(resize_uint8(_fixture("train-images-idx3-ubyte")[:, None], 64)),
        torch.from_numpy(_fixture("train-labels-idx1-ubyte").astype("int64")),
        unit_range(resize_uint8(_fixture("t10k-images-idx3-ubyte")[:, None], 64)),
        torch.from_numpy(_fixture("t10k-labels-idx1-ubyte").astype("int64")),
    )


@pytest.fixture(scope="module")
def reference(classifier, real) -> np.ndarray:
    return measure(classifier, real[2])[0]


def _quality(classifier, images: torch.Tensor, reference: np.ndarray, cfg: EvaluateParams, seed: int) -> dict:
    return quality(*measure(classifier, images), reference, cfg, seed)


def test_the_classifier_reads_digits(classifier, real):
    accuracy = (predict(classifier, real[2]).argmax(1) == real[3]).float().mean().item()
    assert accuracy >= 0.98


def test_real_against_real_scores_like_real(classifier, real, reference):
    # (Its FID, about 55 here, is mostly the bias of estimating 128 x 128 covariances from 256 and 512 images:
    # the tests compare FIDs with one another; at 10,000 samples real against real measured 3.3.)
    scores = _quality(classifier, real[0], reference, CFG, seed=0)
    assert scores["inception_score"] > 8.5
    assert scores["digits_covered"] == 10 and scores["class_kl"] < 0.05
    assert scores["precision"] > 0.6 and scores["recall"] > 0.6
    assert scores["confidence"] > 0.95


def test_noise_scores_like_noise(classifier, real, reference):
    noise = torch.rand(512, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scores = _quality(classifier, noise, reference, CFG, seed=0)
    real_scores = _quality(classifier, real[0], reference, CFG, seed=0)
    assert scores["fid"] > 20 * real_scores["fid"]
    assert scores["kid"] > 20 * real_scores["kid"]
    assert scores["inception_score"] < 1.5
    assert scores["recall"] < 0.05  # noise covers none of the real digits


def test_a_single_digit_is_flagged_as_collapse(classifier, real, reference):
    ones = real[0][real[1] == 1]
    scores = _quality(classifier, ones, reference, CFG, seed=0)
    assert scores["digits_covered"] == 1
    assert scores["class_kl"] > 2.0  # log(10) = 2.30 for one class
    assert scores["inception_score"] < 1.5
    assert scores["recall"] < 0.3
    assert scores["fid"] > 10 * _quality(classifier, real[0], reference, CFG, seed=0)["fid"]


def test_same_inputs_same_seed_same_numbers(classifier, real, reference):
    assert _quality(classifier, real[0], reference, CFG, seed=3) == _quality(
        classifier, real[0], reference, CFG, seed=3
    )


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    features = np.random.default_rng(0).standard_normal((2000, 16))
    assert metrics.fid(features, features) == pytest.approx(0, abs=1e-9)
    assert metrics.fid(features, features + 1.0) == pytest.approx(16, rel=1e-6)  # |mean shift|^2


def test_inception_score_bounds():
    confident_even = np.eye(10)[np.arange(1000) % 10]
    assert metrics.inception_score(confident_even) == pytest.approx(10, rel=1e-6)
    assert metrics.inception_score(np.full((100, 10), 0.1)) == pytest.approx(1, rel=1e-6)
