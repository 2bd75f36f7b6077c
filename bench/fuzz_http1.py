"""The long run of tests/test_http1_oracle.py: gateway/http1.py against h11 on many generated answers.

    python bench/fuzz_http1.py [--examples 5000] [--seed 1]

Same generator, same server, same checks as the CI test (which runs 6 derandomized examples of each
kind and variant); here the kind and variant are drawn too. --seed seeds hypothesis (its choices also
follow what earlier examples did, so two runs are alike, not identical); a failure prints the shrunk
counterexample, which is the reproduction.
Prints the examples per kind/variant and outcome (h11's verdict / what http1 did), the time taken and
the process's RSS before and after. Hypothesis's engine itself keeps data for every example (RSS grows
with generation alone), so memory is judged by a replay: 3 answers of every kind and variant, checked
again and again; the client's RSS must stay flat across rounds (the answers include 80-160 KiB header
floods and bodies past the cap). Exits non-zero with hypothesis's shrunk counterexample on a failure.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
import warnings
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
    ap.add_argument("--replay-rounds", type=int, default=20)
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

    with warnings.catch_warnings():  # .example() outside a test warns; here it is what we want
        warnings.simplefilter("ignore")
        replay = [oracle.cases(k, h).example() for k, hs in oracle.VARIANTS.items() for h in hs for _ in range(3)]
    replay = [c for c in replay if c.close]  # kept-open ones only wait out the read timeout
    rss = []
    for _ in range(args.replay_rounds):
        for case in replay:
            oracle.check(case)
        gc.collect()
        rss.append(rss_mib())
    print(f"replay: {len(replay)} answers x {args.replay_rounds} rounds = {len(replay) * args.replay_rounds} "
          f"checks; RSS after round 1 {rss[0]:.1f} MiB, after the last {rss[-1]:.1f} MiB, max {max(rss):.1f} MiB")


if __name__ == "__main__":
    main()
