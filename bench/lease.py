"""Lease acquisition under contention on a real etcd.

Prints p50/p99 acquire latency and etcd round trips per acquire (min/mean/max) for N racing
acquirers. For reference, flannel (etcd v2 era) read every existing lease: N+1 round trips
for N leases; netd needs list + grant + txn = 3 when it wins the first race, +1 per lost race
(the txn's failure branch carries the fresh list, and the granted lease is kept for the retry).

Run: python bench/lease.py [--acquirers 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from integration.etcd import EtcdServer  # noqa: E402
from integration.leaserace import race  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--acquirers", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    config = '{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}'
    print(f"{args.acquirers} racing acquirers (one etcd connection each, all in this one Python process, "
          f"so latency includes its CPU contention), {args.rounds} rounds, /8 in /24s")
    print(f"{'round':>5} {'p50 ms':>8} {'p99 ms':>8} {'trips min':>9} {'mean':>6} {'max':>5} {'errors':>6}")
    with EtcdServer("bench") as server:
        all_lat, all_trips = [], []
        for r in range(args.rounds):
            outcomes = asyncio.run(race(server.endpoint, f"/bench{r}/network", config, args.acquirers, seed=r + 1))
            lat = [o.seconds * 1000 for o in outcomes]
            trips = [o.round_trips for o in outcomes]
            errors = sum(1 for o in outcomes if o.error)
            all_lat += lat
            all_trips += trips
            print(f"{r + 1:>5} {pct(lat, .5):>8.1f} {pct(lat, .99):>8.1f} {min(trips):>9} "
                  f"{statistics.mean(trips):>6.2f} {max(trips):>5} {errors:>6}")
        print(f"{'all':>5} {pct(all_lat, .5):>8.1f} {pct(all_lat, .99):>8.1f} {min(all_trips):>9} "
              f"{statistics.mean(all_trips):>6.2f} {max(all_trips):>5}")
        n = args.acquirers
        print(f"flannel-style full re-read per acquire would need up to {n + 1} round trips at N={n}; "
              f"netd's mean is {statistics.mean(all_trips):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
