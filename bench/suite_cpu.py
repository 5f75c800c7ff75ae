"""CPU time of each test: the pytest process's own and that of the processes it started and reaped (servers stopped
by process group, `dcgan` and `dvc` commands, torchrun). Processes that detach (DVC's queue workers) are not seen.

    SUITE_CPU_DIR=/tmp/suite-cpu PYTHONPATH=bench PYTEST_ADDOPTS="-p suite_cpu" make test   # one JSON line a test
    python bench/suite_cpu.py /tmp/suite-cpu [--top 15] [--json]                               # the totals, the top

The wall time the suite takes is what CI pays, but on 2 cores it follows CPU time: this says where that goes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pytest_configure(config: pytest.Config) -> None:
    if "SUITE_CPU_DIR" not in os.environ:
        raise pytest.UsageError("-p suite_cpu needs SUITE_CPU_DIR: the folder for its records")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    cpu, wall = _cpu_seconds(), time.monotonic()  # setup, call and teardown of one test
    yield
    record = {"test": item.nodeid, "cpu_s": _cpu_seconds() - cpu, "wall_s": time.monotonic() - wall}
    out = Path(os.environ["SUITE_CPU_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{os.getpid()}.jsonl").open("a") as f:  # one file per xdist worker
        f.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tests = [json.loads(line) for path in sorted(args.dir.glob("*.jsonl")) for line in path.read_text().splitlines()]
    if not tests:
        raise SystemExit(f"{args.dir}: no *.jsonl records; run the suite with SUITE_CPU_DIR={args.dir} first")
    tests.sort(key=lambda t: -t["cpu_s"])
    total = sum(t["cpu_s"] for t in tests)
    top = tests[: args.top]
    summary = {
        "tests": len(tests),
        "cpu_s": round(total, 1),
        "top_share": round(sum(t["cpu_s"] for t in top) / total, 3),
        "top": [{**t, "cpu_s": round(t["cpu_s"], 1), "wall_s": round(t["wall_s"], 1)} for t in top],
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{summary['tests']} tests, {total / 60:.1f} CPU minutes; the top {len(top)}: {summary['top_share']:.0%}")
    for t in top:
        print(f"{t['cpu_s']:7.1f} s CPU {t['wall_s']:7.1f} s wall  {t['test']}")


if __name__ == "__main__":
    main()
