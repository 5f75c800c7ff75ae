"""Settings: `params.yaml` (plus dotted overrides) validated into one `Params` object.

Every stage takes a `Params` and a `Paths`; nothing else reads `params.yaml`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dcgan.errors import ParamsError

PARAMS_FILE = Path("params.yaml")


class _Section(BaseModel):
    # strict: a YAML string "128" is not a batch size; forbid: a typo is not a new key.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


DatasetName = Literal["mnist", "fashion-mnist", "kmnist", "cifar10", "folder"]  # dcgan/data/datasets.py


class DataParams(_Section):
    dataset: DatasetName = "mnist"
    image_size: int = 64
    train_limit: int | None = Field(default=None, ge=1)  # training uses the first N prepared images
    source_dir: str | None = None
    bad_images: Literal["skip", "refuse"] = "skip"  # files of a `folder` data set that cannot be used

    @field_validator("image_size")
    @classmethod
    def _power_of_two(cls, size: int) -> int:
        if size < 16 or size & (size - 1):
            raise ValueError(f"must be a power of two >= 16, got {size}")
        return size


class ModelParams(_Section):
    z_dim: int = Field(default=100, ge=1)
    g_width: int = Field(default=64, ge=1)
    d_width: int = Field(default=64, ge=1)
    init_std: float = Field(default=0.02, gt=0)
    leaky_slope: float = Field(default=0.2, ge=0, lt=1)


class TrainParams(_Section):
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=0.0002, gt=0)
    # The fraction of the run after which both rates fall linearly towards zero at its last step; null = constant
    lr_decay_start: float | None = Field(default=None, ge=0, lt=1)
    # YAML has no tuple: accept the list it gives.
    betas: tuple[float, float] = Field(default=(0.5, 0.99), strict=False)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True  # NHWC convolutions: faster on our CPUs (docs/benchmarks.md) and on tensor cores
    compile: bool = False  # torch.compile the step's networks (no gain measured on the CPU; try it on a GPU)
    nproc_per_node: int = Field(default=1, ge=1)  # > 1: `train` launches torchrun, one DDP process per device
    sync_batchnorm: bool = False  # with DDP: BatchNorm statistics over the global batch, not each rank's share
    nnodes: int = Field(default=1, ge=1)  # > 1: hosts in one torchrun job, each running the same `dcgan train`
    rdzv_endpoint: str | None = Field(default=None, pattern=r"^[^:\s]+:\d+$")  # HOST:PORT, the hosts' meeting point
    max_restarts: int = Field(default=0, ge=0)  # torchrun restarts a failed job this often; it resumes from last.pt
    checkpoint_every: int = Field(default=200, ge=1)
    log_every: int = Field(default=10, ge=1)
    ema_decay: float | None = Field(default=None, gt=0, lt=1)  # an average of G's weights (dcgan/ema.py); null = off
    ema_warmup: int = Field(default=0, ge=0)  # steps over which the average's horizon ramps up
    health_window: int = Field(default=300, ge=0)  # steps the training-health monitor looks back (dcgan/health.py)
    stop_unhealthy: bool = False  # stop at the end of the epoch in which the monitor found a failure

    @field_validator("betas")
    @classmethod
    def _betas_in_unit_interval(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"both betas must be in [0, 1), got {list(betas)}")
        return betas


class ClassifierParams(_Section):
    seed: int = 0  # its own: the instrument that measures every run stays the same when the training seed changes
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=0.001, gt=0)


class EvaluateParams(_Section):
    n_samples: int = Field(default=10_000, ge=2)
    every_epochs: int = Field(default=1, ge=0)  # 0 = no evaluation during training
    quick_samples: int = Field(default=2_000, ge=2)
    kid_subset_size: int = Field(default=1_000, ge=2)


class ExportParams(_Section):
    opset: int = Field(default=20, ge=18)
    parity_atol: float = Field(default=1e-5, gt=0)  # fp32 on ONNX Runtime's CPU provider
    parity_atol_cuda: float = Field(default=1e-4, gt=0)  # fp32 on the CUDA provider, TF32 off on both sides
    bn_recalibration_batches: int = Field(default=50, ge=0)  # 0 keeps the running statistics of training
    fp16: bool = False  # also write models/generator_fp16.onnx, checked against the fp32 torch model
    parity_atol_fp16: float = Field(default=0.0078, gt=0)  # one 8-bit grey level: 2 / 255


class Params(_Section):
    seed: int = 0
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    classifier: ClassifierParams = ClassifierParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()

    @model_validator(mode="after")
    def _batches_fit(self) -> Params:
        limit = self.data.train_limit
        if limit is not None and limit < self.train.batch_size:
            raise ValueError(
                f"data.train_limit ({limit}) is smaller than train.batch_size ({self.train.batch_size}): "
                "training would have no full batch"
            )
        if self.train.ema_decay is not None and self.export.bn_recalibration_batches == 0:
            raise ValueError(
                "train.ema_decay needs export.bn_recalibration_batches > 0: the averaged weights need BatchNorm "
                "statistics of their own, not those the live generator gathered"
            )
        processes = self.train.nproc_per_node * self.train.nnodes
        if self.train.batch_size % processes:
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) is not divisible by train.nproc_per_node "
                f"({self.train.nproc_per_node}) x train.nnodes ({self.train.nnodes}): each process takes an equal "
                "share of every batch"
            )
        if self.train.nnodes > 1 and not self.train.rdzv_endpoint:
            raise ValueError(
                f"train.nnodes is {self.train.nnodes} but train.rdzv_endpoint is not set: give every host the same "
                "HOST:PORT of the first host, e.g. -S train.rdzv_endpoint=gpu-1:29400"
            )
        return self

    def flat(self) -> dict[str, Any]:
        """The effective settings as dotted keys, e.g. {"train.lr": 0.0002}: what MLflow logs."""
        return _flatten(self.model_dump(mode="json"))


@dataclass(frozen=True)
class Paths:
    """Where the stages read and write, relative to the project root (the working directory)."""

    root: Path = Path(".")

    def raw(self, dataset: str) -> Path:
        """data/raw/<dataset>: the data set's files as published (or copied), versioned by data/raw/<dataset>.dvc."""
        return self.root / "data" / "raw" / dataset

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def checkpoints(self) -> Path:
        return self.models / "checkpoints"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def mlflow_run(self) -> Path:
        return self.reports / "mlflow_run.json"


def load_params(path: Path | str = PARAMS_FILE, overrides: Mapping[str, Any] | None = None) -> Params:
    """Read `path`, apply dotted `overrides` ({"train.epochs": 1}) and validate.

    Raises ParamsError naming the file and the offending key.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_describe(path, err)) from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """["train.epochs=1", "data.train_limit=null"] -> {"train.epochs": 1, "data.train_limit": None}.

    Values are read as YAML, as `dvc exp run -S` does.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ParamsError(f"override {pair!r}: expected KEY=VALUE, e.g. train.epochs=1")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ParamsError(f"override {dotted}: {part} is not a section")
        node = child
    node[leaf] = value


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _describe(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid params"]
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {key}: {message} (got {problem['input']!r})")
    return "\n".join(lines)
