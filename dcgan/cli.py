"""`dcgan <stage>`: one short command per stage, each a call of the stage function in dcgan/.

Heavy libraries are imported inside the commands, so that `dcgan --help` answers at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from dcgan.config import PARAMS_FILE, Params, Paths, load_params, parse_overrides
from dcgan.errors import DcganError, ParamsError

app = typer.Typer(
    help="DCGAN on MNIST (or data.dataset): fetch, prepare, classifier, train, evaluate, export.", no_args_is_help=True
)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="The params file.")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-S", help="Override a param, e.g. -S train.epochs=1 (repeatable).")
]


def _run(stage: Callable[[Params, Paths], Any], params_file: Path, overrides: list[str] | None) -> None:
    _report(lambda: stage(load_params(params_file, parse_overrides(overrides or [])), Paths()))


def _report(call: Callable[[], Any]) -> None:
    """Run `call`, print its result (a dataclass as JSON); a DcganError becomes its message and a non-zero exit."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("dcgan").setLevel(logging.INFO)  # ours at INFO; the libraries' chatter only from WARNING
    try:
        result = call()
    except DcganError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(err.exit_code) from None
    typer.echo(result if isinstance(result, str) else json.dumps(dataclasses.asdict(result), default=str, indent=2))


@app.command()
def fetch(params_file: ParamsOption = PARAMS_FILE, overrides: SetOption = None) -> None:
    """Materialize data.dataset's files in data/raw/<dataset> (local folder or download, checksums checked),
    unless they already match data/raw/<dataset>.dvc."""
    from dcgan.versioning import fetch_versioned

    _run(fetch_versioned, params_file, overrides)


@app.command()
def prepare(params_file: ParamsOption = PARAMS_FILE, overrides: SetOption = None) -> None:
    """data/raw/<dataset> -> uint8 tensors at data.image_size in data/prepared."""
    from dcgan.data import prepare

    _run(prepare, params_file, overrides)


@app.command()
def classifier(params_file: ParamsOption = PARAMS_FILE, overrides: SetOption = None) -> None:
    """Train the data set's classifier that the evaluation measures with."""
    from dcgan.classifier import train_classifier

    _run(train_classifier, params_file, overrides)


@app.command()
def train(
    params_file: ParamsOption = PARAMS_FILE,
    overrides: SetOption = None,
    tags: Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE set on the MLflow run.")] = None,
) -> None:
    """Train (or resume) the DCGAN, logging to MLflow; launches torchrun when train.nproc_per_node > 1."""
    from dcgan.train import train

    run_tags = dict(tag.partition("=")[::2] for tag in tags or [])
    _run(lambda params, paths: train(params, paths, run_tags=run_tags), params_file, overrides)


@app.command()
def evaluate(params_file: ParamsOption = PARAMS_FILE, overrides: SetOption = None) -> None:
    """Sample grid and metrics of the trained generator."""
    from dcgan.evaluate import evaluate

    _run(evaluate, params_file, overrides)


@app.command()
def export(params_file: ParamsOption = PARAMS_FILE, overrides: SetOption = None) -> None:
    """The generator to models/generator.onnx, checked for parity under ONNX Runtime."""
    from dcgan.export import export

    _run(export, params_file, overrides)


@app.command()
def generate(
    model: Annotated[str, typer.Option(help="An .onnx file, or models:/dcgan-generator@champion (via MLflow).")],
    n: Annotated[int, typer.Option("-n", help="How many images.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the latents.")] = 0,
    out: Annotated[Path, typer.Option(help="The grid PNG.")] = Path("grid.png"),
    individual: Annotated[Path | None, typer.Option(help="Also one PNG per image in this folder.")] = None,
    truncation: Annotated[float | None, typer.Option(help="Resample latents beyond +-t.")] = None,
) -> None:
    """Sample images from the exported ONNX generator, with onnxruntime alone (no torch)."""
    from dcgan.generate import generate_images

    _report(lambda: generate_images(model, n, seed, out, individual, truncation))


@app.command()
def sweep(
    grid: Annotated[
        list[str] | None, typer.Option("--grid", "-g", help="KEY=[v1, v2]: a YAML list of values (repeatable).")
    ] = None,
    seeds: Annotated[str, typer.Option(help="The seeds every grid point runs with, e.g. 0,1,2.")] = "0",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Members run at once (DVC queue workers).")] = 1,
    name: Annotated[str | None, typer.Option(help="The sweep's name (default sweep-<date>-<time>).")] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Train and evaluate every member of a grid times the seeds through DVC's experiment queue, as child runs
    of one MLflow run that compares them."""
    from dcgan.sweep import run_sweep

    def run() -> Any:
        try:
            seed_list = [int(seed) for seed in seeds.split(",") if seed.strip()]
        except ValueError:
            raise ParamsError(f"--seeds {seeds}: expected whole numbers separated by commas, e.g. 0,1,2") from None
        return run_sweep(params_file, parse_overrides(grid or []), seed_list, jobs, name, Paths())

    _report(run)


web = typer.Typer(help="The generator in the browser: a static page on onnxruntime-web, no server-side inference.")
app.add_typer(web, name="web")


@web.command("build")
def web_build(
    model: Annotated[str, typer.Option(help="models:/NAME@ALIAS or /VERSION (via MLflow), or an .onnx file.")] = (
        "models:/dcgan-generator@champion"
    ),
    out: Annotated[Path, typer.Option(help="The folder to build (replaced whole once the new one is ready).")] = Path(
        "web"
    ),
) -> None:
    """The page, the pinned onnxruntime-web files, the generator, its classifier and a model card, in one folder."""
    from dcgan.web.build import build_site

    _report(lambda: build_site(model, out, Paths()))


@web.command("serve")
def web_serve(
    folder: Annotated[Path, typer.Option("--dir", help="The built folder.")] = Path("web"),
    host: Annotated[str, typer.Option(help="The address to listen on; 127.0.0.1 keeps it on this machine.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="The port.")] = 8000,
) -> None:
    """Serve the built page over HTTP until Ctrl-C."""
    from dcgan.web.serve import serve_page

    _report(lambda: serve_page(folder, host, port))


team = typer.Typer(help="Team mode: PostgreSQL, the MLflow and Prefect servers and a work pool (docs/team.md).")
app.add_typer(team, name="team")
TeamDir = Annotated[Path, typer.Option("--dir", help="The stack's folder (state, passwords, logs, remotes).")]


@team.command("up")
def team_up(
    folder: TeamDir = Path(".team"),
    host: Annotated[str, typer.Option(help="Where MLflow and Prefect listen; 0.0.0.0 to serve other machines.")] = (
        "127.0.0.1"
    ),
    postgres_port: Annotated[int, typer.Option(help="PostgreSQL's port (on 127.0.0.1 only).")] = 5433,
    mlflow_port: Annotated[int, typer.Option(help="The MLflow server's port.")] = 5000,
    prefect_port: Annotated[int, typer.Option(help="The Prefect server's port.")] = 4200,
    postgres_data: Annotated[Path | None, typer.Option(help="PostgreSQL's data folder (default DIR/postgres).")] = None,
    auth: Annotated[bool, typer.Option(help="MLflow's basic auth: users, passwords, permissions.")] = False,
    pool: Annotated[str, typer.Option(help="The process work pool workers poll.")] = "dcgan",
    pool_concurrency: Annotated[int, typer.Option(help="Flow runs at once on the pool.")] = 1,
) -> None:
    """Start the team servers in the background (PostgreSQL first); `dcgan team down` stops them."""
    from dcgan.team.stack import Stack, client_env, up

    def run() -> str:
        stack = up(Stack(
            dir=folder.resolve(), host=host, postgres_port=postgres_port, mlflow_port=mlflow_port,
            prefect_port=prefect_port, postgres_data=postgres_data, auth=auth, pool=pool,
            pool_concurrency=pool_concurrency,
        ))  # fmt: skip
        lines = [f"export {key}={value}" for key, value in client_env(stack).items()]
        return "\n".join(["# team stack up; clients set:", *lines])

    _report(run)


@team.command("down")
def team_down(folder: TeamDir = Path(".team")) -> None:
    """Stop the team servers and PostgreSQL; their data stays in the folder for the next `up`."""
    from dcgan.team.stack import down, load

    def run() -> str:
        down(load(folder.resolve()))
        return f"team stack in {folder} stopped"

    _report(run)


@team.command("env")
def team_env(folder: TeamDir = Path(".team")) -> None:
    """The environment a client sets for the stack: `eval "$(dcgan team env)"` (no passwords)."""
    from dcgan.team.stack import client_env, load

    _report(lambda: "\n".join(f"export {k}={v}" for k, v in client_env(load(folder.resolve())).items()))
