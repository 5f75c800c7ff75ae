"""`python -m flows.run` (what `make run` calls): the train-dcgan flow once, in this process.

With no PREFECT_API_URL, Prefect starts a temporary local server for the run, which on a fresh PREFECT_HOME first
creates its database: the wait for it is generous here (flows.SERVER_STARTUP_S), and the user is told about it.
Errors a user can act on end the run with one line naming the cause (and exit non-zero), not a traceback of
Prefect's internals.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from flows import SERVER_STARTUP_S

# Before Prefect reads its settings; a value the user set wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(SERVER_STARTUP_S))

from prefect.settings import PREFECT_API_URL, PREFECT_HOME  # noqa: E402
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP_TIMEOUT  # noqa: E402

from dcgan.config import parse_overrides  # noqa: E402
from dcgan.errors import DcganError  # noqa: E402
from dcgan.files import check_writable  # noqa: E402
from flows.train_dcgan import PATHS, train_dcgan  # noqa: E402

EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


class _NoTracebackForDcganErrors(logging.Filter):
    """A DcganError's message says what went wrong and what to do; its traceback is noise in the run's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], DcganError):
            record.exc_info = record.exc_text = None
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the train-dcgan flow once, in this process.")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="e.g. -S train.epochs=1")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        check_writable(
            PATHS.root.resolve(), "the pipeline writes its outputs there; run it in a folder you can write to"
        )
        if not PREFECT_API_URL.value():
            home = PREFECT_HOME.value()
            check_writable(home, "Prefect keeps its state there; set PREFECT_HOME to a folder you can write to")
            print(
                f"Starting a local Prefect server for this run, its database in {home} (on a new one, the first "
                f"start creates it: up to a minute on a slow CPU; waiting up to {STARTUP_TIMEOUT.value()} s) ...",
                flush=True,
            )
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_NoTracebackForDcganErrors())
        summary = train_dcgan(overrides=overrides)
    except DcganError as err:
        return _fail(str(err), err.exit_code)
    except RuntimeError as err:
        if EPHEMERAL_TIMEOUT not in str(err):
            raise
        return _fail(
            f"the local Prefect server did not answer within {STARTUP_TIMEOUT.value()} s: on a machine this busy, "
            "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start a server (`make prefect-server`) and "
            "set PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    print(
        f"done: MLflow run {summary['mlflow_run_id']}, {summary['model_uri']} ({summary['promotion']}), "
        f"ONNX generator in {PATHS.models / 'generator.onnx'}",
        flush=True,
    )
    return 0


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
