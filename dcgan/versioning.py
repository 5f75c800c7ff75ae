"""DVC as the judge of the data when a stage runs outside `dvc repro` (the Prefect flow).

DVC decides whether the raw files must be fetched and whether `prepare` must run, and records what `prepare`
made in dvc.lock and the DVC cache, so the data stays DVC-versioned whichever front door made it.
"""

from __future__ import annotations

import logging

from dcgan.config import PARAMS_FILE, Params, Paths, load_params
from dcgan.data import fetch, prepare

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


def prepare_versioned(params: Params, paths: Paths) -> str:
    """Prepare the data unless DVC says `prepare` is up to date; record the result in dvc.lock.

    DVC reads the data settings from params.yaml, so it can decide only when `params` agree with that file.
    With other data settings (an override), the data is prepared directly and dvc.lock is left alone.
    Returns what happened, in words.
    """
    from dvc.repo import Repo

    on_file = load_params(paths.root / PARAMS_FILE).data
    if (on_file.image_size, on_file.train_limit) != (params.data.image_size, params.data.train_limit):
        prepare(params, paths)
        outcome = "prepared with overridden data settings: not recorded in dvc.lock, which follows params.yaml"
    else:
        with Repo(str(paths.root)) as repo:
            if not repo.status(targets=["prepare"]):
                outcome = "up to date: DVC found nothing changed since dvc.lock"
            else:
                prepare(params, paths)
                repo.commit("prepare", force=True)
                outcome = "prepared and recorded in dvc.lock"
    log.info("prepare: %s", outcome)
    return outcome
