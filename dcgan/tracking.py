"""MLflow: where runs go, the run a pipeline shares across its stages, and what ties a run to code and data.

One MLflow run per pipeline run: `train` starts it (or reopens it when resuming) and writes its id to
`reports/mlflow_run.json`; `evaluate` and `export` log into the same run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest.mock import patch

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]  # registered at import
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from dcgan.config import Params, Paths
from dcgan.errors import AuthError, DcganError, TrackingError
from dcgan.files import write_json_atomic

log = logging.getLogger(__name__)


# MLflow's mark of what an experiment is for: "custom_model_development" is model training, not GenAI. (The 3.17
# UI's own GenAI / Model training switch, or ?workflowType=machine_learning in its URL, decides the view it opens:
# the tag alone did not, checked in headless Chromium.)
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


# MLflow's error codes for a rejected credential (HTTP 401) and a refused permission (403).
AUTH_ERRORS = ("UNAUTHENTICATED", "PERMISSION_DENIED")
# MLFLOW_TRACKING_URI schemes of a database: a client there writes artifacts to its own folder.
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")

# Set by `dcgan sweep` for DVC's queue workers: {"parent_run_id", "name", "keys"} (dcgan/sweep.py).
SWEEP_ENV = "DCGAN_SWEEP"


def sweep_tags(flat_params: Mapping[str, Any]) -> dict[str, str]:
    """A sweep member's run: the child of the sweep's parent run, named and tagged by its DVC experiment and
    its overrides. Empty outside a sweep."""
    sweep = json.loads(os.environ.get(SWEEP_ENV) or "{}")
    if not sweep:
        return {}
    member = os.environ.get("DVC_EXP_NAME", "")  # DVC names each queued experiment's run
    overrides = {key: flat_params[key] for key in sweep["keys"] if key in flat_params}
    return {
        "mlflow.parentRunId": sweep["parent_run_id"],
        "mlflow.runName": member,
        "sweep": sweep["name"],
        "sweep.member": member,
        "sweep.overrides": json.dumps(overrides, sort_keys=True),
    }


def experiment_name(dataset: str) -> str:
    """One MLflow experiment per data set: dcgan-mnist, dcgan-fashion-mnist, dcgan-cifar10, ..."""
    return f"dcgan-{dataset}"


# Project stores this process pointed MLflow at. mlflow.set_tracking_uri exports its URI as
# $MLFLOW_TRACKING_URI, which must not then pass for the user's choice when another project is used.
_PROJECT_STORES: set[str] = set()


def tracking_uri(paths: Paths) -> str:
    """$MLFLOW_TRACKING_URI as the user set it, else the SQLite store `mlflow.db` at the project root.

    Under DVC the project root is $DVC_ROOT: an experiment from DVC's queue runs in a temporary copy of the
    project, and its runs belong in the project's store, not in one deleted with the copy.
    """
    chosen = os.environ.get("MLFLOW_TRACKING_URI")
    if chosen and chosen not in _PROJECT_STORES:
        if chosen.split(":", 1)[0].split("+", 1)[0] in DATABASE_SCHEMES:
            raise DcganError(
                f"MLFLOW_TRACKING_URI={chosen.split('://', 1)[0]}://... points at a database, not a tracking server: "
                "this machine would keep the run's artifacts in a folder of its own, out of the team's reach. Use "
                "the MLflow server's http(s):// URL (docs/team.md)"
            )
        return chosen
    root = Path(os.environ.get("DVC_ROOT") or paths.root)
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def use_store(paths: Paths) -> str:
    """Point MLflow at this project's store; returns its URI."""
    uri = tracking_uri(paths)
    if uri != os.environ.get("MLFLOW_TRACKING_URI"):
        _PROJECT_STORES.add(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def use_experiment(paths: Paths, dataset: str) -> str:
    """Point MLflow at this project's store and the data set's experiment; returns the experiment id."""
    uri = use_store(paths)
    name = experiment_name(dataset)
    with server_errors(uri):
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:  # one made before the tag was set
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
            return experiment.experiment_id
        # With a SQLite store, artifacts live in mlartifacts/ beside the database file; a server decides for itself.
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        tags = {"dataset": dataset, EXPERIMENT_KIND: MODEL_TRAINING}
        return mlflow.create_experiment(name, artifact_location=location, tags=tags)


def unreachable(err: MlflowException) -> bool:
    """A tracking server that did not answer, after MLflow's own retries with backoff: worth a later retry.
    A rejected credential or permission is not: it fails the same way every time."""
    return "API request to" in str(err) and err.error_code not in AUTH_ERRORS


@contextmanager
def server_errors(uri: str) -> Iterator[None]:
    """Turn MLflow's "API request ... failed" into a TrackingError (no answer) or an AuthError (401, 403) that
    says what to do."""
    try:
        yield
    except MlflowException as err:
        if err.error_code in AUTH_ERRORS:
            raise AuthError(_auth_message(uri, err)) from None
        if not unreachable(err):
            raise
        first_line = str(err).splitlines()[0][:400]
        raise TrackingError(
            f"the MLflow tracking server {uri} did not answer ({first_line}). Start it, or unset "
            "MLFLOW_TRACKING_URI to use the local SQLite store; checkpoints already written are kept, and "
            "`dcgan train` resumes from them"
        ) from err


def _auth_message(uri: str, err: MlflowException) -> str:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    endpoint = str(err).split("endpoint ", 1)[-1].split(" ", 1)[0]
    if err.error_code == "UNAUTHENTICATED":
        who = f"no such user {user!r}, or a wrong password" if user else "no credentials were given"
        return (
            f"the MLflow server {uri} rejected the credentials (HTTP 401 on {endpoint}): {who}. Set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your account on that server"
        )
    return (
        f"the MLflow server {uri} refused user {user or '(none)'} permission (HTTP 403 on {endpoint}): ask an "
        'MLflow admin to grant it EDIT on the experiment (docs/team.md, "Users and permissions")'
    )


@contextmanager
def training_run(
    params: Params, paths: Paths, resume_run_id: str | None, tags: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Start the pipeline's MLflow run, or reopen `resume_run_id`; yields the run id.

    Logs the effective params, the git commit and the DVC hashes of the data, and records the run id
    for the later stages. If the body fails, the run ends FAILED (KILLED on Ctrl-C) with the reason in the tag
    `failure_reason`. Runs that a killed process left RUNNING are ended first (`end_abandoned_runs`).
    """
    dataset = params.data.dataset
    experiment_id = use_experiment(paths, dataset)
    with server_errors(tracking_uri(paths)):
        end_abandoned_runs(experiment_id, keep=resume_run_id)
        if resume_run_id and not _run_exists(resume_run_id):
            log.warning("MLflow run %s of the checkpoint is not in %s: new run", resume_run_id, tracking_uri(paths))
            resume_run_id = None
        # MLflow would record the entry point's absolute path (a home folder, a venv) as the run's source.
        source_tag = None if resume_run_id else {"mlflow.source.name": "dcgan train"}
        run_id = mlflow.start_run(run_id=resume_run_id, experiment_id=experiment_id, tags=source_tag).info.run_id
        try:
            _log_new_params(run_id, params.flat())
            raw_hash, prepared_hash = dvc_hash(paths.raw(dataset)), dvc_hash(paths.prepared)
            mlflow.set_tags(
                {
                    "git_commit": git_commit(paths.root),
                    "host": socket.gethostname(),  # which process owns the run: see end_abandoned_runs
                    "pid": str(os.getpid()),
                    "dataset": dataset,
                    "data.raw.dvc_md5": raw_hash,
                    "data.prepared.dvc_md5": prepared_hash,
                    **sweep_tags(params.flat()),
                    **(tags or {}),
                }
            )
            source = LocalArtifactDatasetSource(str(paths.prepared))
            prepared = MetaDataset(source, name=f"{dataset}-prepared", digest=prepared_hash)  # type: ignore[abstract]
            mlflow.log_input(prepared, context="training")
            write_json_atomic(paths.mlflow_run, {"run_id": run_id, "experiment_id": experiment_id})
            yield run_id
        except BaseException as err:
            _end_failed(run_id, err)
            raise
        mlflow.end_run()


def _end_failed(run_id: str, err: BaseException) -> None:
    """Mark the run FAILED (KILLED for Ctrl-C) with the reason, in one quick try: a server that is down (maybe
    the failure itself) is only logged, without another round of MLflow's retries."""
    status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
    with patch.dict(os.environ, {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}):
        try:
            mlflow.set_tag("failure_reason", f"{type(err).__name__}: {err}"[:5000])
        except MlflowException as tag_err:
            log.warning("MLflow run %s: could not record the failure: %s", run_id, str(tag_err).splitlines()[0])
        try:
            mlflow.end_run(status)  # leaves no active run behind, even when the server does not answer
        except MlflowException as end_err:
            log.warning("MLflow run %s: could not mark it %s: %s", run_id, status, str(end_err).splitlines()[0])


def end_abandoned_runs(experiment_id: str, keep: str | None = None) -> None:
    """End as KILLED the runs still RUNNING whose `dcgan train` process, on this host, is gone: a process killed
    by SIGKILL, the kernel's out-of-memory killer or a power cut cannot end its own run.

    Runs of other hosts are left alone (their processes cannot be seen from here), and so is `keep`, the run
    about to be resumed.
    """
    host = socket.gethostname()
    running = mlflow.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.host = '{host}'", output_format="list"
    )
    client = mlflow.MlflowClient()
    for run in running:
        pid = run.data.tags.get("pid", "")
        if run.info.run_id == keep or not pid.isdigit() or _process_exists(int(pid)):
            continue
        client.set_tag(
            run.info.run_id,
            "failure_reason",
            f"its training process ({pid} on {host}) ended without closing the run: killed (SIGKILL, out of "
            "memory) or the machine went down",
        )
        client.set_terminated(run.info.run_id, "KILLED")
        log.warning("MLflow run %s was left RUNNING by process %s, which is gone: marked KILLED", run.info.run_id, pid)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


@contextmanager
def pipeline_run(paths: Paths) -> Iterator[str]:
    """Reopen the run `train` started (for evaluate and export); yields the run id."""
    try:
        run_id = json.loads(paths.mlflow_run.read_text())["run_id"]
    except (OSError, ValueError, KeyError) as err:
        raise DcganError(f"{paths.mlflow_run}: no MLflow run recorded ({err}): run `dcgan train` first") from None
    use_store(paths)
    with server_errors(tracking_uri(paths)):
        if not _run_exists(run_id):
            raise DcganError(f"{paths.mlflow_run}: MLflow run {run_id} is not in {tracking_uri(paths)}")
        with mlflow.start_run(run_id=run_id):
            yield run_id


def log_step_metrics(run_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
    """Log many steps' metrics in one request: [(step, {"loss_d": ...}), ...]."""
    timestamp = _now_ms()
    metrics = [Metric(key, value, timestamp, step) for step, values in rows for key, value in values.items()]
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), 1000):  # the tracking API's batch limit
        client.log_batch(run_id, metrics=metrics[start : start + 1000], synchronous=True)


def git_commit(root: Path) -> str:
    """HEAD's commit, suffixed '-dirty' when tracked files have changes; 'unknown' outside git."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_hash(path: Path) -> str:
    """The md5 DVC records for `path`: of the bytes for a file, of the sorted listing (".dir") for a folder."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    if path.is_file():
        return _md5(path)
    tree = Tree()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        tree.add(file.relative_to(path).parts, Meta(size=file.stat().st_size), HashInfo("md5", _md5(file)))
    tree.digest()
    assert tree.hash_info is not None and tree.hash_info.value is not None
    return tree.hash_info.value


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _log_new_params(run_id: str, flat: dict[str, Any]) -> None:
    """Log the params; on a resumed run keep the first values (MLflow params are immutable) and say so."""
    logged = mlflow.get_run(run_id).data.params
    changed = {k: v for k, v in flat.items() if k in logged and logged[k] != str(v)}
    if changed:
        log.warning("resumed run keeps its logged params; now also: %s", changed)
        mlflow.set_tag("resumed_with", json.dumps(changed, sort_keys=True))
    mlflow.log_params({k: v for k, v in flat.items() if k not in logged})


def _run_exists(run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
        return True
    except MlflowException:
        return False


def _now_ms() -> int:
    return int(time.time() * 1000)


def model_version_link(paths: Paths, model_uri: str) -> str:
    """Where a person opens `models:/NAME/VERSION`: the server's UI page, or the URI itself for a local store."""
    uri = tracking_uri(paths)
    if not uri.startswith(("http://", "https://")):
        return model_uri
    name, version = model_uri.removeprefix("models:/").split("/")
    return f"{uri.rstrip('/')}/#/models/{name}/versions/{version}"
