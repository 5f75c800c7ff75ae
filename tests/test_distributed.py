"""Training under torchrun: 2 CPU processes with the gloo backend, as on a machine with 2 GPUs and NCCL."""

import socket

import mlflow
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from dcgan.classifier import train_classifier
from dcgan.config import Paths
from dcgan.data import prepare
from dcgan.distributed import Ranks, check_identical
from dcgan.errors import DcganError, ParamsError
from dcgan.tracking import experiment_name, tracking_uri
from dcgan.train import METRICS, train

from .conftest import write_params

EXPERIMENT = experiment_name("mnist")


def test_nproc_per_node_2_launches_torchrun_with_one_run_and_one_checkpoint(
    project: Paths, capfd: pytest.CaptureFixture[str]
):
    params = write_params(project.root, **{"train.nproc_per_node": 2})
    prepare(params, project)
    train_classifier(params, project)

    progress: list[tuple[int, int, dict[str, float]]] = []
    result = train(params, project, run_tags={"launched_by": "test"}, on_progress=lambda *p: progress.append(p))

    assert result.steps == 2 * 256 // 32 and result.resumed_from == 0
    # Rank 0's progress reaches the launching process's hook (the Prefect task's progress artifact).
    assert progress[-1][:2] == (result.steps, result.steps) and set(progress[-1][2]) == set(METRICS)
    assert progress[-1][2] == pytest.approx(result.final)
    out = capfd.readouterr()
    # Each rank checks at the end that it holds exactly rank 0's weights, and says so.
    assert out.err.count("all 2 processes hold identical weights") == 2, out.err[-3000:]
    client = mlflow.MlflowClient(tracking_uri(project))
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    assert run.data.params["train.nproc_per_node"] == "2" and run.data.tags["launched_by"] == "test"
    assert len(client.get_metric_history(result.run_id, "loss_d")) == result.steps  # logged once, by rank 0
    assert [p.name for p in project.checkpoints.rglob("*") if p.is_file()] == ["last.pt"]
    assert load_file(project.models / "generator.safetensors")  # rank 0 saved the weights


def test_a_world_size_that_params_do_not_name_is_refused(project: Paths, tiny, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(DcganError, match="train.nproc_per_node is 1 on 1 host\(s\) but torchrun started 4 processes"):
        train(tiny, project)


def test_the_batch_must_split_evenly(project: Paths):
    split = r"batch_size \(32\) is not divisible by train.nproc_per_node \(3\) x train.nnodes \(1\)"
    with pytest.raises(ParamsError, match=split):
        write_params(project.root, **{"train.nproc_per_node": 3})


def _diverging_rank(rank: int, port: int, errors: "mp.SimpleQueue") -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    net = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(net.weight, 0.5 + rank)  # rank 1 holds other weights
    try:
        check_identical([net], Ranks(rank, 2, rank))
        errors.put(None)
    except DcganError as err:
        errors.put(str(err))
    finally:
        dist.destroy_process_group()


def test_the_identity_check_catches_ranks_that_differ():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    errors = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_diverging_rank, args=(port, errors), nprocs=2, start_method="spawn")
    assert [errors.get(), errors.get()] == ["the Linear's weights differ between the training processes"] * 2
