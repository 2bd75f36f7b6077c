"""The long soak: mixed traffic against a real gateway in front of two OpenAI doubles for --seconds.

    python bench/soak.py [--seconds 300] [--warmup 30] [--workers 8]

The traffic, the backend restart half-way and every check live in tests/soak.py (the suite's
tests/test_soak.py runs the same code for ~20 s). Prints the figures and exits 1 if a bound is
broken. Logs of the gateway and the doubles stay in the printed directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests import soak  # noqa: E402  (the shared soak code)
from tests.procs import Spawner  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=300.0, help="traffic after the warm-up")
    p.add_argument("--warmup", type=float, default=30.0, help="traffic before the baseline is taken")
    p.add_argument("--workers", type=int, default=8, help="concurrent clients, one request at a time each")
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    spawn = Spawner(tmp)
    load0, t0 = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        r = soak.soak(spawn, a.seconds, a.warmup, a.workers)
    finally:
        spawn.stop_all()
    r["started"], r["loadavg_start"], r["loadavg_end"] = t0, load0, os.getloadavg()
    bad = soak.check(r)
    print(soak.report(r))
    print(f"load average (1/5/15 min) at start {load0}, at end {r['loadavg_end']}; logs in {tmp}")
    if a.json:
        a.json.write_text(json.dumps(r, indent=1, default=str))
    for b in bad:
        print("FAIL:", b)
    print("PASS" if not bad else f"{len(bad)} bound(s) broken")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
