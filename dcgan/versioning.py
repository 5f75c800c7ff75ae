"""DVC as the judge of the data when stages run outside `dvc repro` (the Prefect flow).

DVC decides whether the raw files must be fetched and whether a data stage (`prepare`, `classifier`) must run,
and records what the stage made in dvc.lock and the DVC cache, so its outputs stay DVC-versioned whichever front
door made them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dcgan.config import PARAMS_FILE, Params, Paths, load_params
from dcgan.data import fetch

log = logging.getLogger(__name__)


def fetch_versioned(params: Params, paths: Paths) -> str:
    """Fetch the raw files unless they already match data/raw/mnist.dvc; returns what happened, in words."""
    from dvc.repo import Repo

    with Repo(str(paths.root)) as repo:
        if not repo.status(targets=[str(paths.raw.with_suffix(".dvc"))]):
            outcome = f"up to date: {paths.raw} matches {paths.raw.with_suffix('.dvc').name}"
        else:
            outcome = f"fetched from {fetch(params, paths).source}"
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
