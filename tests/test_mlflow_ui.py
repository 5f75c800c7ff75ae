"""The README's way into the MLflow UI, checked in real headless Chromium against a real `mlflow ui`: the URL it
gives opens the model-training view of the project's experiment, and a sweep's members sit under its parent run."""

from __future__ import annotations

import httpx
import mlflow

from dcgan import tracking
from dcgan.config import Paths
from dcgan.web.browser import chromium

from .conftest import Processes, free_port, user_env, wait_until


def test_the_readme_url_opens_the_model_training_view_with_nested_runs(project: Paths, processes: Processes):
    experiment_id = tracking.use_experiment(project, "mnist")
    client = mlflow.MlflowClient()
    parent = client.create_run(experiment_id, tags={"mlflow.runName": "ui-sweep", "sweep.role": "parent"})
    child = client.create_run(
        experiment_id, tags={"mlflow.runName": "ui-sweep-1", "mlflow.parentRunId": parent.info.run_id}
    )
    client.log_metric(child.info.run_id, "fid_quick", 123.0, step=8)
    for run in (child, parent):
        client.set_terminated(run.info.run_id)

    port = free_port()
    store = tracking.tracking_uri(project)
    command = ["mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)]
    processes.start("mlflow-ui", command, cwd=project.root, env=user_env())
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, "mlflow ui", processes)
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{url}/#/experiments/{experiment_id}?workflowType=machine_learning", wait_until="load")
        page.get_by_text("ui-sweep", exact=True).wait_for(timeout=60_000)  # the parent, in the runs table
        assert page.get_by_text("Run Name", exact=True).is_visible()  # the model-training view's runs table
        assert page.get_by_text("ui-sweep-1", exact=True).count() == 0  # a child sits folded under its parent
        page.screenshot(path=str(project.root / "mlflow-ui.png"))
