"""End to end with real processes on 127.0.0.1: a Prefect server, an MLflow server, the served deployments,
and `prefect deployment run train-dcgan/train-dcgan --watch` as a user types it; then a sweep, run by
`prefect deployment run sweep-dcgan/sweep-dcgan` through DVC's queue, nested in MLflow over HTTP."""

import json
import subprocess
from pathlib import Path

import httpx
import mlflow

from .conftest import BIN, Processes, free_port, user_env, wait_until


def test_deployment_run_trains_tracks_and_registers(repo: Path, tmp_path: Path, processes: Processes):
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    env = user_env(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=prefect_api,
        MLFLOW_TRACKING_URI=mlflow_uri,
    )
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    prefect_server = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
    processes.start("prefect-server", prefect_server, tmp_path, server_env)
    processes.start("mlflow-server", ["mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                                      "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                                      "--artifacts-destination", str(tmp_path / "mlartifacts")],
                    tmp_path, env)  # fmt: skip
    # Started at once, as a user in a second shell would: flows.serve waits while the new server makes its database.
    processes.start("serve", [str(BIN / "python"), "-m", "flows.serve"], repo, env)
    wait_until(lambda: httpx.get(f"{mlflow_uri}/health").status_code == 200, "mlflow server", processes)
    deployments = f"{prefect_api}/deployments/filter"
    wait_until(lambda: httpx.post(deployments, json={}).json(), "deployment train-dcgan", processes)

    # Two runs at once: the deployment (limit=1) queues the second until the first has finished.
    overrides = json.dumps({"overrides": {"train.epochs": 1}})
    deployment_run = ["prefect", "deployment", "run", "train-dcgan/train-dcgan", "--params", overrides]
    first = subprocess.run(deployment_run, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    run = subprocess.run(
        [*deployment_run, "--watch", "--watch-timeout", "500"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{processes.tail()}"

    flow_runs = sorted(httpx.post(f"{prefect_api}/flow_runs/filter", json={}).json(), key=lambda r: r["start_time"])
    assert [r["state"]["type"] for r in flow_runs] == ["COMPLETED", "COMPLETED"]
    assert flow_runs[0]["end_time"] <= flow_runs[1]["start_time"]  # one after the other, not interleaved

    client = mlflow.MlflowClient(mlflow_uri)  # over HTTP
    mlflow_runs = client.search_runs(
        client.get_experiment_by_name("dcgan-mnist").experiment_id, order_by=["start_time"]
    )
    assert [r.data.tags["prefect.flow_run_id"] for r in mlflow_runs] == [r["id"] for r in flow_runs]
    mlflow_run = mlflow_runs[0]
    assert mlflow_run.data.params["train.epochs"] == "1"
    assert {"loss_d", "loss_g", "fid_quick", "eval_fid", "parity_max_abs_error"} <= set(mlflow_run.data.metrics)
    version = client.get_model_version("dcgan-generator", "1")
    assert version.run_id == mlflow_run.info.run_id
    # What the README tells a user to type to download it.
    download = tmp_path / "generator"
    command = ["mlflow", "artifacts", "download", "-u", "models:/dcgan-generator/1", "-d", str(download)]
    fetched = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0, fetched.stderr
    assert (download / "model.onnx").is_file()

    # A sweep through the other deployment: DVC's queue runs it, its run nested under the parent (test_sweep.py runs
    # several members at once).
    sweep_run = [
        "prefect",
        "deployment",
        "run",
        "sweep-dcgan/sweep-dcgan",
        "--watch",
        "--watch-timeout",
        "500",
        "-p",
        'grid={"train.lr": [0.0004]}',
        "-p",
        "seeds=[0]",
        "-p",
        "jobs=1",
        "-p",
        "name=lr",
    ]
    swept = subprocess.run(sweep_run, cwd=repo, env=env, capture_output=True, text=True, timeout=560)  # fmt: skip
    assert swept.returncode == 0, f"{swept.stdout}\n{swept.stderr}\n{processes.tail()}"
    (parent,) = client.search_runs(mlflow_run.info.experiment_id, filter_string="tags.`sweep.role` = 'parent'")
    assert parent.info.status == "FINISHED" and parent.data.metrics["members_succeeded"] == 1
    children = client.search_runs(
        mlflow_run.info.experiment_id, filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(r.data.tags["sweep.member"] for r in children) == ["lr-1"]
    assert all("eval_fid" in r.data.metrics for r in children)
    artifacts = httpx.post(f"{prefect_api}/artifacts/filter", json={}).json()
    comparison = next(a for a in artifacts if a["key"] == "sweep-dcgan-comparison")["data"]
    assert "| lr-1 | train.lr=0.0004, seed=0 | success |" in comparison
