"""The long run of tests/test_http1_oracle.py: gateway/http1.py against h11 on many generated answers.

    python bench/fuzz_http1.py [--examples 5000] [--seed 1]

Same generator, same server, same checks as the CI test (which runs 6 derandomized examples of each
kind and variant); here the kind and variant are drawn too, from a seed, so a run can be repeated.
Prints the examples per kind/variant and outcome (h11's verdict / what http1 did), the time taken and
the process's RSS before and after (the answers include 80-160 KiB header floods and bodies past the
cap: memory must stay flat). Exits non-zero with hypothesis's shrunk counterexample on a failure.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from tests import test_http1_oracle as oracle  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    @seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=oracle.cases())
    def fuzz(case: oracle.Case) -> None:
        oracle.check(case)

    rss0, t0 = rss_mib(), time.monotonic()
    failed = None
    try:
        fuzz()
    except BaseException as exc:  # the shrunk counterexample is in the message
        failed = exc
    took, rss1 = time.monotonic() - t0, rss_mib()
    stats = oracle.STATS
    width = max(map(len, stats), default=10)
    for key in sorted(stats):
        print(f"{key:<{width}}  {stats[key]:>6}")
    runs = sum(stats.values())
    kinds = {k.split(":")[0] for k in stats}
    print(f"\n{runs} runs (hypothesis examples incl. shrinking) of {args.examples} requested, seed {args.seed}, "
          f"{len(kinds)} kind/variant/rule groups, {took:.0f} s ({runs / took:.0f}/s); "
          f"RSS {rss0:.1f} -> {rss1:.1f} MiB")
    if failed is not None:
        print(f"\nFAILED: {failed!r}")
        raise SystemExit(1)
    print("no disagreement with h11 outside the documented rules")


if __name__ == "__main__":
    main()
