import pickle
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from dcgan.checkpoint import checkpoint_path, load_checkpoint
from dcgan.classifier import train_classifier
from dcgan.config import Paths, load_params
from dcgan.data import prepare
from dcgan.errors import CheckpointError, TrainingDiverged
from dcgan.tensors import read_metadata
from dcgan.tracking import dvc_hash, experiment_name, tracking_uri
from dcgan.train import METRICS, Nets, build_nets, train, train_step

EXPERIMENT = experiment_name("mnist")

STEPS_PER_EPOCH = 256 // 32


@pytest.fixture
def prepared(project: Paths, tiny) -> Paths:
    """Prepared data and a (tiny, weak) classifier for the quick FID."""
    prepare(tiny, project)
    train_classifier(tiny, project)
    return project


def _copy(project: Paths, root: Path) -> Paths:
    """Another project folder with the same data and classifier, for a second, independent run."""
    shutil.copytree(project.root / "data", root / "data")
    (root / "models").mkdir()
    shutil.copy(project.models / "classifier.safetensors", root / "models")
    return Paths(root)


def _weights(paths: Paths) -> dict[str, torch.Tensor]:
    return {
        **load_file(paths.models / "generator.safetensors"),
        **load_file(paths.models / "discriminator.safetensors"),
    }


def _client(paths: Paths) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri(paths))


def test_training_logs_metrics_images_and_data_hashes(prepared: Paths, tiny):
    result = train(tiny, prepared)

    assert result.steps == 2 * STEPS_PER_EPOCH and result.resumed_from == 0
    client = _client(prepared)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == EXPERIMENT and experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for key in METRICS:
        history = client.get_metric_history(result.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, result.steps + 1))  # every step, once
    assert run.data.params["train.lr"] == "0.0002" and run.data.params["model.z_dim"] == "8"
    assert run.data.tags["data.raw.dvc_md5"] == dvc_hash(prepared.raw("mnist"))
    assert run.data.tags["data.prepared.dvc_md5"] == dvc_hash(prepared.prepared)
    assert run.data.tags["git_commit"]
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == dvc_hash(prepared.prepared)

    # One sample grid per epoch, as a stepped image series.
    images = [a.path for a in client.list_artifacts(result.run_id, "images")]
    assert sum(p.endswith(".png") and "samples" in p for p in images) == 2
    weights = {a.path for a in client.list_artifacts(result.run_id, "weights")}
    assert weights == {"weights/generator.safetensors", "weights/discriminator.safetensors"}

    # A quick FID each epoch; the generator saved is the one with the best.
    fids = client.get_metric_history(result.run_id, "fid_quick")
    assert sorted(m.step for m in fids) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    best = min(fids, key=lambda m: m.value)
    assert (result.best_step, result.best_fid) == (best.step, best.value)
    assert read_metadata(prepared.models / "generator.safetensors")["step"] == best.step
    assert (prepared.reports / "fid.csv").read_text().startswith("step,fid_quick\n")

    assert load_checkpoint(checkpoint_path(tiny, prepared))["step"] == result.steps
    assert (prepared.reports / "train.json").read_text().count(result.run_id) == 1
    lines = (prepared.reports / "losses.csv").read_text().splitlines()
    assert lines[0] == "step,loss_d,loss_g,d_real,d_fake" and len(lines) == result.steps + 1
    assert result.run_id in (prepared.reports / "mlflow_run.json").read_text()


def test_same_seed_same_weights(tmp_path: Path, prepared: Paths, tiny):
    """Two runs in two folders, fp32 and bf16 alike: bit-identical weights on the CPU."""
    for precision in ("fp32", "bf16"):
        params = tiny.model_copy(update={"train": tiny.train.model_copy(update={"precision": precision})})
        runs = []
        for name in ("a", "b"):
            root = tmp_path / f"{precision}-{name}"
            train(params, _copy(prepared, root))
            runs.append(_weights(Paths(root)))
        assert runs[0].keys() == runs[1].keys()
        assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0]), precision


@pytest.mark.parametrize("ema", [None, {"ema_decay": 0.9, "ema_warmup": 3}], ids=["plain", "ema"])
def test_resume_continues_the_run_bit_for_bit(tmp_path: Path, prepared: Paths, tiny, ema):
    tiny = tiny.model_copy(update={"train": tiny.train.model_copy(update=ema or {})})
    uninterrupted = train(tiny, prepared)
    expected = _weights(prepared)

    # Train one epoch, then resume with the full schedule.
    other = _copy(prepared, tmp_path / "resumed")
    partial = tiny.model_copy(update={"train": tiny.train.model_copy(update={"epochs": 1})})
    first = train(partial, other)
    assert first.steps == STEPS_PER_EPOCH
    resumed = train(tiny, other)

    assert resumed.resumed_from == STEPS_PER_EPOCH and resumed.run_id == first.run_id
    assert resumed.steps == uninterrupted.steps
    got = _weights(other)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # The loss curve of the resumed run equals the uninterrupted one.
    assert (other.reports / "losses.csv").read_text() == (prepared.reports / "losses.csv").read_text()


@pytest.mark.parametrize("lr_decay_start", [None, 0.25], ids=["constant-lr", "decaying-lr"])
def test_resume_mid_epoch_after_a_crash(
    tmp_path: Path, prepared: Paths, tiny, monkeypatch: pytest.MonkeyPatch, lr_decay_start: float | None
):
    import dcgan.train

    tiny = _with_train(tiny, lr_decay_start=lr_decay_start)
    train(tiny, prepared)
    expected = _weights(prepared)

    other = _copy(prepared, tmp_path / "crashed")
    real_step, calls = dcgan.train.train_step, []

    def crash_at_step_7(*args):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(dcgan.train, "train_step", crash_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train(tiny, other)
    monkeypatch.setattr(dcgan.train, "train_step", real_step)
    assert load_checkpoint(checkpoint_path(tiny, other))["step"] == 5  # checkpoint_every=5: mid-epoch

    resumed = train(tiny, other)
    assert resumed.resumed_from == 5
    got = _weights(other)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_changed_params_start_from_scratch_and_overwrite_no_checkpoint(prepared: Paths, tiny):
    first = train(tiny, prepared)
    kept = checkpoint_path(tiny, prepared).read_bytes()
    changed = tiny.model_copy(update={"train": tiny.train.model_copy(update={"lr": 0.001})})
    second = train(changed, prepared)
    assert second.resumed_from == 0 and second.run_id != first.run_id
    assert checkpoint_path(changed, prepared) != checkpoint_path(tiny, prepared)
    assert checkpoint_path(tiny, prepared).read_bytes() == kept


def _with_train(params, **update):
    return params.model_copy(update={"train": params.train.model_copy(update=update)})


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            lambda s: s["params"].update({"model.g_width": 16}),
            r"trained with other settings \(model.g_width: 16 -> 8\)",
        ),
        (lambda s: s["generator"].update({"main.0.weight": torch.zeros(3, 3, 4, 4)}), "does not fit this model"),
        (lambda s: s.update({"step": 99}), "holds step 99, beyond this run's 8 steps"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_and_kept(prepared: Paths, tiny, tamper, message: str):
    one_epoch = _with_train(tiny, epochs=1, checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):  # stop after the first checkpoint, mid-epoch
        train(one_epoch, prepared, on_progress=_interrupt)
    path = checkpoint_path(one_epoch, prepared)
    state = torch.load(path, weights_only=True)
    tamper(state)
    torch.save(state, path)
    tampered = path.read_bytes()

    with pytest.raises(CheckpointError, match=message):
        train(one_epoch, prepared)
    assert path.read_bytes() == tampered


def _interrupt(step: int, total: int, metrics: dict) -> None:
    if step >= 4:
        raise KeyboardInterrupt


def test_a_pickle_checkpoint_is_refused_not_executed(prepared: Paths, tiny, tmp_path: Path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    checkpoint_path(tiny, prepared).parent.mkdir(parents=True)
    checkpoint_path(tiny, prepared).write_bytes(pickle.dumps({"step": 1, "params": {}, "x": Exploit()}))
    with pytest.raises(CheckpointError, match="last.pt: not a usable checkpoint"):
        train(tiny, prepared)
    assert not marker.exists()


def test_training_needs_prepared_data(project: Paths, tiny):
    from dcgan.errors import DataError

    with pytest.raises(DataError, match="train.safetensors: missing: run `dcgan prepare` first"):
        train(tiny, project)
    assert load_params(project.root / "params.yaml") == tiny


def test_a_nan_loss_stops_training_keeps_the_checkpoint_and_fails_the_run(
    prepared: Paths, tiny, monkeypatch: pytest.MonkeyPatch
):
    import dcgan.train

    real_step, calls = dcgan.train.train_step, []

    def poison_at_step_7(nets, *args):
        calls.append(1)
        if len(calls) == 7:  # a weight turns NaN, as after an exploding update
            next(nets.discriminator.parameters()).data.fill_(float("nan"))
        return real_step(nets, *args)

    monkeypatch.setattr(dcgan.train, "train_step", poison_at_step_7)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 7: \{'loss_d': nan.*last.pt \(step 5\) is kept"):
        train(tiny, prepared)

    state = load_checkpoint(checkpoint_path(tiny, prepared))
    assert state["step"] == 5 and all(torch.isfinite(t).all() for t in state["discriminator"].values())
    client = _client(prepared)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("TrainingDiverged: training diverged at step 7")


def _seed_step(nets: Nets, real: torch.Tensor, z: torch.Tensor) -> None:
    """The seed's step written out plainly: D's weight gradients computed in G's update too, then discarded."""
    ones, zeros = torch.ones(len(real)), torch.zeros(len(real))
    fake = nets.generator(z)
    loss_d = F.binary_cross_entropy_with_logits(nets.discriminator(real), ones)
    loss_d = loss_d + F.binary_cross_entropy_with_logits(nets.discriminator(fake.detach()), zeros)
    nets.opt_d.zero_grad()
    loss_d.backward()
    nets.opt_d.step()
    loss_g = F.binary_cross_entropy_with_logits(nets.discriminator(fake), ones)
    nets.opt_g.zero_grad()
    loss_g.backward()
    nets.opt_g.step()


def test_the_training_step_trains_exactly_as_the_seeds_step(tiny):
    ours, seeds = build_nets(tiny, torch.device("cpu"), 1), build_nets(tiny, torch.device("cpu"), 1)
    torch.manual_seed(1)
    size = tiny.data.image_size
    for _ in range(3):
        real, z = torch.rand(16, 1, size, size) * 2 - 1, torch.randn(16, tiny.model.z_dim, 1, 1)
        train_step(ours, real, z, None)
        _seed_step(seeds, real, z)

    for net in ("generator", "discriminator"):
        expected = getattr(seeds, net).state_dict()
        for name, tensor in getattr(ours, net).state_dict().items():
            assert torch.equal(tensor, expected[name]), f"{net}.{name}"
    assert all(p.requires_grad for p in ours.discriminator.parameters())


def test_compiled_networks_train_like_eager_ones(tmp_path: Path, prepared: Paths, tiny):
    one_epoch = {"epochs": 1}
    eager = train(tiny.model_copy(update={"train": tiny.train.model_copy(update=one_epoch)}), prepared)
    other = _copy(prepared, tmp_path / "compiled")
    compiled_params = tiny.train.model_copy(update={**one_epoch, "compile": True})
    compiled = train(tiny.model_copy(update={"train": compiled_params}), other)

    assert compiled.steps == eager.steps
    for key, value in eager.final.items():
        assert compiled.final[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key


def test_no_absolute_paths_in_what_mlflow_records(prepared: Paths, tiny, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(prepared.root)  # as a user runs it: paths relative to the project
    result = train(_with_train(tiny, epochs=1), Paths())
    run = _client(prepared).get_run(result.run_id)
    recorded = {**run.data.params, **run.data.tags, "input": run.inputs.dataset_inputs[0].dataset.source}
    absolute = [f"{k}={v}" for k, v in recorded.items() if v.startswith("/") or '"/' in v or str(Path.home()) in v]
    assert not absolute
    assert run.data.tags["mlflow.source.name"] == "dcgan train"


def test_two_projects_in_one_process_log_to_their_own_stores(tmp_path: Path, prepared: Paths, tiny):
    # mlflow.set_tracking_uri exports the first project's store as $MLFLOW_TRACKING_URI: not the user's choice.
    first = train(_with_train(tiny, epochs=1), prepared)
    other = _copy(prepared, tmp_path / "other")
    second = train(_with_train(tiny, epochs=1), other)
    assert _client(other).get_run(second.run_id).info.status == "FINISHED"
    assert [
        r.info.run_id
        for r in _client(other).search_runs([_client(other).get_experiment_by_name(EXPERIMENT).experiment_id])
    ] == [second.run_id]
    assert first.run_id != second.run_id


def test_an_experiment_made_before_the_view_tag_gets_it(tmp_path: Path):
    """The MLflow UI opens an untagged experiment in its GenAI view; ours is tagged for the model-training view."""
    from dcgan.tracking import use_experiment

    paths = Paths(tmp_path)
    client = _client(paths)
    old = client.create_experiment(EXPERIMENT)
    assert use_experiment(paths, "mnist") == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_with_ema_the_average_of_the_generator_is_measured_and_saved(prepared: Paths, tiny):
    """train.ema_decay: the saved generator is the average of G's weights, not the last G, and it is what the quick
    FID chose from; the checkpoint carries both."""
    ema = tiny.train.model_copy(update={"ema_decay": 0.8, "ema_warmup": 4})
    params = tiny.model_copy(update={"train": ema, "evaluate": tiny.evaluate.model_copy(update={"every_epochs": 0})})
    train(params, prepared)
    state = load_checkpoint(checkpoint_path(params, prepared))
    saved = load_file(prepared.models / "generator.safetensors")
    assert all(torch.equal(saved[k], state["ema"][k]) for k in saved)
    weights = [k for k in saved if k.endswith(".weight")]
    assert not all(torch.equal(saved[k], state["generator"][k]) for k in weights)


def test_the_learning_rate_decays_linearly_over_the_last_part_of_the_run(prepared: Paths, tiny):
    from dcgan.train import learning_rate

    assert [learning_rate(tiny.train, step, 16) for step in (0, 15)] == [tiny.train.lr] * 2  # the seed's: constant
    decaying = _with_train(tiny, lr_decay_start=0.5, checkpoint_every=100)
    rates = [learning_rate(decaying.train, step, 16) for step in range(16)]
    assert rates[:9] == [tiny.train.lr] * 9 and rates[15] == pytest.approx(tiny.train.lr / 8)
    assert all(a > b for a, b in zip(rates[8:], rates[9:], strict=False))
    # Both optimizers ran their last step at the last rate.
    train(decaying, prepared)
    state = load_checkpoint(checkpoint_path(decaying, prepared))
    assert {group["lr"] for opt in ("opt_g", "opt_d") for group in state[opt]["param_groups"]} == {rates[15]}
    # Its length is part of a decaying run's settings: more epochs are another run, not a continuation.
    longer = _with_train(decaying, epochs=3)
    assert checkpoint_path(longer, prepared) != checkpoint_path(decaying, prepared)
    assert checkpoint_path(_with_train(tiny, epochs=3), prepared) == checkpoint_path(tiny, prepared)


def test_the_ema_horizon_ramps_up_over_the_warmup():
    from dcgan.ema import Ema

    live = torch.nn.Linear(1, 1, bias=False)
    ema = Ema(live, decay=0.99, warmup=100)
    assert ema.decay_at(1) == pytest.approx(0.99**100) and ema.decay_at(50) == pytest.approx(0.99**2)
    assert ema.decay_at(100) == ema.decay_at(10_000) == 0.99
    start = ema.module.weight.item()  # the live weights at the start
    with torch.no_grad():
        live.weight.fill_(1.0)
    ema.update(live, 1)
    assert ema.module.weight.item() == pytest.approx(0.99**100 * start + (1 - 0.99**100) * 1.0)
    ema.update(live, 200)
    assert ema.module.weight.item() == pytest.approx(0.99 * (0.99**100 * start + (1 - 0.99**100)) + 0.01)
