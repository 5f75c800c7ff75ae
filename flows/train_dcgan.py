"""The `train-dcgan` flow: the pipeline's stages as Prefect tasks.

Wiring only. Each task calls the stage function that the CLI and dvc.yaml call; the flow adds retries where a
retry can help, artifacts for the Prefect UI, and ties the Prefect run to the MLflow run.
"""

from __future__ import annotations

import logging
import os

# Before Prefect reads its settings: our loggers, MLflow's and DVC's go to the run's logs, ours from INFO.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "dcgan,mlflow,dvc")
logging.getLogger("dcgan").setLevel(logging.INFO)

from typing import Any, cast  # noqa: E402
from uuid import UUID  # noqa: E402

import requests  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.artifacts import (  # noqa: E402
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.logging import get_run_logger  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from dcgan import tracking  # noqa: E402
from dcgan.classifier import train_classifier  # noqa: E402
from dcgan.config import PARAMS_FILE, Params, Paths, load_params  # noqa: E402
from dcgan.data import prepare  # noqa: E402
from dcgan.errors import DownloadError, TrackingError  # noqa: E402
from dcgan.evaluate import EvaluateResult, evaluate  # noqa: E402
from dcgan.export import ExportResult, export  # noqa: E402
from dcgan.train import TrainResult, train  # noqa: E402
from dcgan.versioning import fetch_versioned, run_versioned, share_versioned  # noqa: E402

PATHS = Paths()


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed download or an MLflow server that did not answer; never bad params, data, parity or a
    rejected credential (AuthError)."""
    try:
        state.result()
    except (DownloadError, TrackingError, requests.ConnectionError, requests.Timeout):
        return True
    except MlflowException as err:
        return tracking.unreachable(err)  # never a rejected credential or permission
    except Exception:
        return False
    return False


# A task retried 3 times, 5 s then 10 s then 20 s apart (with jitter), when its failure is transient.
retried_task = task(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
)


@retried_task
def fetch_data(params: Params) -> str:
    return fetch_versioned(params, PATHS)


@task
def prepare_data(params: Params) -> str:
    return run_versioned("prepare", prepare, params, PATHS)


@task
def classifier_model(params: Params) -> str:
    return run_versioned("classifier", train_classifier, params, PATHS)


@retried_task
def train_model(params: Params) -> TrainResult:
    # Prefect's artifact functions are sync or async by context; here, sync: a UUID.
    progress = cast(UUID, create_progress_artifact(0.0, key="train-dcgan-progress", description="training progress"))

    def report(step: int, total: int, metrics: dict[str, float]) -> None:
        update_progress_artifact(progress, 100.0 * step / total)

    return train(params, PATHS, on_progress=report, run_tags={"prefect.flow_run_id": str(flow_run.id)})


@retried_task
def evaluate_model(params: Params) -> EvaluateResult:
    return evaluate(params, PATHS)


@retried_task
def export_model(params: Params) -> ExportResult:
    """ONNX export, parity check and registration: a parity failure fails the task, with no retry."""
    return export(params, PATHS)


@retried_task
def share_files(params: Params) -> str:
    """With a DVC remote: the run's data, weights and ONNX files pushed as a DVC experiment (team mode)."""
    return share_versioned(params, PATHS)


@flow(name="train-dcgan", log_prints=True)
def train_dcgan(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fetch and prepare the data set (MNIST unless data.dataset says otherwise), train the classifier and the
    DCGAN, evaluate, export to ONNX and register; with a DVC remote, push the run's files (a DVC experiment).

    `overrides` maps dotted params.yaml keys to values, e.g. {"train.epochs": 1}.
    """
    logger = get_run_logger()
    params = load_params(PATHS.root / PARAMS_FILE, overrides)
    fetched = fetch_data(params)
    prepared = prepare_data(params)
    classifier = classifier_model(params)
    trained = train_model(params)
    logger.info("MLflow run %s (%s)", trained.run_id, tracking.tracking_uri(PATHS))
    evaluated = evaluate_model(params)
    exported = export_model(params)
    shared = share_files(params)

    summary = {
        "mlflow_run_id": trained.run_id,
        "model_uri": exported.model_uri,
        "steps": trained.steps,
        "resumed_from": trained.resumed_from,
        "fetch": fetched,
        "prepare": prepared,
        "classifier": classifier,
        "metrics": evaluated.metrics,
        "parity_max_abs_error": exported.max_abs_error,
        "parity_provider": exported.provider,
        "promotion": exported.promotion,
        "shared": shared,
        "health": trained.health or "healthy: the monitor found neither D winning nor mode collapse",
    }
    create_markdown_artifact(_summary_markdown(params, summary), key="train-dcgan-summary")
    create_link_artifact(
        tracking.model_version_link(PATHS, exported.model_uri), link_text=exported.model_uri, key="train-dcgan-model"
    )
    return summary


def _summary_markdown(params: Params, summary: dict[str, Any]) -> str:
    rows = "\n".join(f"| `{key}` | {value} |" for key, value in params.flat().items())
    metrics = "\n".join(f"| {key} | {value:.4g} |" for key, value in summary["metrics"].items())
    return f"""# train-dcgan

MLflow run `{summary["mlflow_run_id"]}`, registered model `{summary["model_uri"]}`.
{summary["steps"]} training steps (resumed from step {summary["resumed_from"]}). Training health: {summary["health"]}.
Raw data: {summary["fetch"]}. Prepared data: {summary["prepare"]}. Classifier: {summary["classifier"]}.

ONNX parity: max abs error {summary["parity_max_abs_error"]:.3g} on {summary["parity_provider"]} (passed).
Registry: {summary["promotion"]}. Files: {summary["shared"]}.

| metric | value |
| --- | --- |
{metrics}

| param | value |
| --- | --- |
{rows}
"""
