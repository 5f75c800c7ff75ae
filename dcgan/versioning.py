"""DVC as the judge of the data when stages run outside `dvc repro` (the Prefect flow).

DVC decides whether the raw files must be fetched and whether a data stage (`prepare`, `classifier`) must run,
and records what the stage made in dvc.lock and the DVC cache, so its outputs stay DVC-versioned whichever front
door made them.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable

import mlflow
import yaml

from dcgan import tracking
from dcgan.config import PARAMS_FILE, Params, Paths, load_params
from dcgan.data import fetch
from dcgan.errors import DcganError

log = logging.getLogger(__name__)


def fetch_versioned(params: Params, paths: Paths) -> str:
    """Fetch the raw files unless they already match data/raw/<dataset>.dvc; a data set fetched for the first
    time is put under DVC (`dvc add`: commit the .dvc file it writes). Returns what happened, in words."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    raw = paths.raw(params.data.dataset)
    dvc_file = raw.with_name(f"{raw.name}.dvc")
    try:
        repo = Repo(str(paths.root))
    except NotDvcRepoError:
        outcome = (
            f"fetched from {fetch(params, paths).source} (not versioned: {paths.root.resolve()} is no DVC repository)"
        )
        log.info("fetch: %s", outcome)
        return outcome
    with repo:
        if dvc_file.is_file() and not repo.status(targets=[str(dvc_file)]):
            outcome = f"up to date: {raw} matches {dvc_file.name}"
        elif dvc_file.is_file():
            source = fetch(params, paths).source
            # Into DVC's cache too (the files match the .dvc file: fetch checked them), so that the next check
            # finds them up to date and DVC's experiment queue can check them out in its temporary workspaces.
            repo.commit(str(dvc_file), force=True)
            outcome = f"fetched from {source}"
        else:
            source = fetch(params, paths).source
            repo.add(str(raw))
            outcome = f"fetched from {source}; versioned by {dvc_file} (commit it with git)"
    log.info("fetch: %s", outcome)
    return outcome


def run_versioned(stage: str, work: Callable[[Params, Paths], object], params: Params, paths: Paths) -> str:
    """Run `work` (the stage's function) unless DVC says `stage` is up to date; record its outputs in dvc.lock.

    DVC reads a stage's params from params.yaml, so it can judge only when `params` agree with that file on
    the keys the stage declares. Where an override changes one of them, `work` runs and dvc.lock is left alone.
    Returns what happened, in words.
    """
    from dvc.repo import Repo

    with Repo(str(paths.root)) as repo:
        (dvc_stage,) = repo.stage.collect(stage)
        declared = [key for dependency in dvc_stage.params for key in dependency.params]
        on_file, effective = load_params(paths.root / PARAMS_FILE).flat(), params.flat()
        overridden = [
            key
            for key, value in effective.items()
            if any(key == d or key.startswith(f"{d}.") for d in declared) and on_file[key] != value
        ]
        if overridden:
            work(params, paths)
            outcome = (
                f"ran with overridden {', '.join(overridden)}: not recorded in dvc.lock, which follows params.yaml"
            )
        elif not repo.status(targets=[stage]):
            outcome = "up to date: DVC found nothing changed since dvc.lock"
        else:
            work(params, paths)
            repo.commit(stage, force=True)
            outcome = "ran and recorded in dvc.lock"
    log.info("%s: %s", stage, outcome)
    return outcome


def share_versioned(params: Params, paths: Paths) -> str:
    """After a successful run, when the project has a default DVC remote: save the run's files as the DVC
    experiment `mlflow-<run id>` (params.yaml with the run's effective params, dvc.lock with the hashes of
    everything it made) and push it: the commit through the git remote `origin`, the files to the DVC remote
    (`dvc exp push`). A teammate gets them back with `dvc exp pull origin <name>` and `dvc exp apply <name>`.

    The workspace's params.yaml and dvc.lock are put back as they were. Returns what happened, in words.
    """
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo(str(paths.root))
    except NotDvcRepoError:
        return f"not shared: {paths.root.resolve()} is no DVC repository"
    with repo:
        remote = repo.config["core"].get("remote")
        if not remote:
            outcome = "not shared: the project has no default DVC remote (`dvc remote add -d`)"
            log.info("share: %s", outcome)
            return outcome
        with tracking.pipeline_run(paths) as run_id:
            name = f"mlflow-{run_id}"
            mlflow.set_tag("dvc.experiment", name)  # the MLflow run names the experiment that holds its files
        git_remotes = subprocess.run(["git", "remote"], cwd=paths.root, capture_output=True, text=True).stdout
        if "origin" not in git_remotes.split():
            raise DcganError(f"{paths.root}: no git remote 'origin' to share the experiment {name} through")
        params_file, lock = paths.root / PARAMS_FILE, paths.root / "dvc.lock"
        kept = {path: path.read_bytes() if path.exists() else None for path in (params_file, lock)}
        try:
            # The params this run used, so that the experiment's dvc.lock agrees with its params.yaml.
            params_file.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
            repo.experiments.save(name=name, force=True)  # records every stage's outputs, as `dvc commit`
        finally:
            for path, content in kept.items():
                if content is None:
                    path.unlink(missing_ok=True)
                else:
                    path.write_bytes(content)
        try:
            repo.experiments.push("origin", [name], push_cache=True, force=True)
        except Exception as err:  # DVC's push errors: an unreachable remote, no permission, a full disk
            raise DcganError(
                f"could not push the DVC experiment {name} (git remote origin, DVC remote {remote}): {err}. The "
                f"files stay here; retry with `dvc exp push origin {name}`"
            ) from err
    outcome = f"shared as DVC experiment {name} (git remote origin, DVC remote {remote})"
    log.info("share: %s", outcome)
    return outcome
