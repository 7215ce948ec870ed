"""Hostile requests against a real server: the answer, its time and the server's memory.

Prints one JSON object per case (and one for the machine). Usage::

    python bench/hostile.py                  # every case of tests/hostile.py, 3 runs each
    python bench/hostile.py --repeat 5 --only PNG

Starts ``aeot serve`` (no worker) on a small fitted store in a temporary directory, with the
bundle limit of the test suite (16 MiB), and sends each case of ``tests/hostile.py`` (the
cases ``tests/test_faults_hostile.py`` asserts). For each: the statuses, the median wall time
from the first byte sent to the last byte of the answer(s), and the largest growth of the
server's peak resident memory over the runs (after one valid request on each path, so
first-use imports are not counted) (``VmHWM`` after a reset through
``/proc/<pid>/clear_refs``). The client runs on the same machine; its share of the cores
counts in the times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine_info
from tests.hostile import ANONYMOUS, BUNDLE_LIMIT, KEYED, MIB, PeakRSS, warm_up
from tests.service_helpers import (
    API_KEY,
    fit_store,
    live_server,
    make_settings,
    write_bundle,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case")
    parser.add_argument("--only", default="", help="cases whose name contains this text")
    args = parser.parse_args()
    emit({"name": "machine", "machine": machine_info(), "load": os.getloadavg()})
    with tempfile.TemporaryDirectory(prefix="aeot-hostile-") as tmp:
        work = Path(tmp)
        store = fit_store(work / "store")
        bundle = write_bundle(work / "bundle", n=30, d=4)
        settings = make_settings(store.root, max_bundle_bytes=BUNDLE_LIMIT)
        procs: list[subprocess.Popen[bytes]] = []
        with live_server(settings, procs=procs, quiet=True) as url:
            pid = procs[0].pid
            warm_up(url, API_KEY)
            for case in [*ANONYMOUS, *KEYED]:
                if args.only not in case.name:
                    continue
                send = case.make(bundle, work)
                seconds, growth, statuses = [], [], []
                for _ in range(args.repeat):
                    with PeakRSS(pid) as probe:
                        statuses = send(url, API_KEY)
                    seconds.append(probe.seconds)
                    growth.append(probe.growth)
                emit(
                    {
                        "name": "hostile",
                        "case": case.name,
                        "keyed": case.keyed,
                        "statuses": statuses,
                        "expected": case.expect,
                        "seconds_median": round(statistics.median(seconds), 4),
                        "rss_growth_mib_max": round(max(growth) / MIB, 1),
                        "budget_mib": case.budget // MIB,
                        "runs": args.repeat,
                        "load": os.getloadavg(),
                    }
                )


if __name__ == "__main__":
    main()
