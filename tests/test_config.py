import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dcgan.cli import app
from dcgan.config import Params, load_params, parse_overrides
from dcgan.errors import ParamsError

from .conftest import REPO, TINY, write_params


def test_params_yaml_is_the_seed_configuration():
    params = load_params(REPO / "params.yaml")
    assert params == Params()  # the file and the defaults agree
    assert (params.data.image_size, params.train.batch_size, params.train.epochs) == (64, 128, 30)
    assert params.train.betas == (0.5, 0.99) and params.train.lr == 0.0002
    assert (params.model.z_dim, params.model.g_width, params.model.d_width) == (100, 64, 64)


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ({"train.lr": 0}, "train.lr", "greater than 0"),
        ({"train.lr": -1.0}, "train.lr", "greater than 0"),
        ({"train.batch_size": 0}, "train.batch_size", "greater than or equal to 1"),
        ({"data.image_size": 48}, "data.image_size", "power of two"),
        ({"data.image_size": 8}, "data.image_size", "power of two"),
        ({"data.train_limit": -5}, "data.train_limit", "greater than or equal to 1"),
        ({"train.batch_size": "128"}, "train.batch_size", "valid integer"),
        ({"train.epochs": 1.5}, "train.epochs", "valid integer"),
        ({"train.betas": [0.5]}, "train.betas.1", "Field required"),
        ({"train.betas": [0.5, 1.5]}, "train.betas", "[0, 1)"),
        ({"train.device": "tpu"}, "train.device", "'auto', 'cpu' or 'cuda'"),
        ({"train.ema_decay": 1.0}, "train.ema_decay", "less than 1"),
        ({"data.dataset": "imagenet"}, "data.dataset", "'mnist', 'fashion-mnist', 'kmnist', 'cifar10' or 'folder'"),
        ({"train.learning_rate": 0.1}, "train.learning_rate", "unknown key"),
        ({"modle.z_dim": 10}, "modle", "unknown key"),
    ],
)
def test_bad_params_name_the_key(tmp_path: Path, override: dict, key: str, words: str):
    with pytest.raises(ParamsError) as err:
        load_params(_written(tmp_path), override)
    message = str(err.value)
    assert f"{key}:" in message and words in message and "params.yaml" in message


def test_limit_below_one_batch_is_refused(tmp_path: Path):
    with pytest.raises(ParamsError, match=r"train_limit \(16\) is smaller than train.batch_size \(32\)"):
        load_params(_written(tmp_path), {"data.train_limit": 16})


def test_ema_without_its_own_batchnorm_statistics_is_refused(tmp_path: Path):
    with pytest.raises(ParamsError, match="train.ema_decay needs export.bn_recalibration_batches > 0"):
        load_params(_written(tmp_path), {"train.ema_decay": 0.999, "export.bn_recalibration_batches": 0})


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="bad.yaml: not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_overrides_are_read_as_yaml():
    assert parse_overrides(["train.epochs=3", "data.train_limit=null", "train.betas=[0.5, 0.9]"]) == {
        "train.epochs": 3,
        "data.train_limit": None,
        "train.betas": [0.5, 0.9],
    }
    with pytest.raises(ParamsError, match="expected KEY=VALUE"):
        parse_overrides(["train.epochs"])


def test_flat_names_every_effective_setting():
    flat = Params().flat()
    assert flat["train.betas"] == [0.5, 0.99] and flat["model.z_dim"] == 100 and flat["seed"] == 0


def test_cli_refuses_bad_params_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(app, ["prepare", "-S", "train.lr=0"])
    assert result.exit_code == 2
    assert "train.lr: Input should be greater than 0" in result.output
    assert not (tmp_path / "data").exists()


def _written(root: Path) -> Path:
    write_params(root)
    return root / "params.yaml"


def test_the_cpu_preset_is_valid_params_and_the_readme_names_it():
    """`make run PRESET=cpu` passes the Makefile's PRESET_cpu as -S overrides: each must be a known key."""
    dry_run = subprocess.run(["make", "-n", "run", "PRESET=cpu"], cwd=REPO, capture_output=True, text=True, check=True)
    (command,) = [line for line in dry_run.stdout.splitlines() if "flows.run" in line]
    pairs = command.split("flows.run", 1)[1].replace("-S", " ").split()
    preset = load_params(REPO / "params.yaml", parse_overrides(pairs))
    assert (preset.data.image_size, preset.train.epochs, preset.train.lr) == (32, 9, 0.0004)
    assert f'OVERRIDES="{" ".join(pairs)}"' in (REPO / "README.md").read_text()
