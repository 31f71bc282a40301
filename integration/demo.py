"""The README's demo: etcd and 3 namespace hosts running netd (vxlan), a ping across the overlay.

Started by ``scripts/demo``. Everything lives in network namespaces and temp dirs, and is torn
down on exit (Ctrl-C, or at once when stdin is not a terminal or --no-wait is given).
"""

from __future__ import annotations

import argparse
import json
import sys

from integration.cluster import Cluster


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--hosts", type=int, default=3)
    p.add_argument("--backend", choices=["vxlan", "host-gw"], default="vxlan")
    p.add_argument("--no-wait", action="store_true", help="tear down right after the ping")
    args = p.parse_args()
    if args.hosts < 2:
        p.error("--hosts must be at least 2")

    print(f"netd demo: etcd + {args.hosts} namespace hosts, backend {args.backend}")
    with Cluster(args.hosts) as c:
        print(f"  etcd is up at {c.etcd_endpoint} (inside namespace {c.underlay_ns})")
        out = c.netctl(1, "config", "set", "--network", "10.5.0.0/16", "--backend", args.backend)
        print(f"  netctl config set -> {out.stdout.strip()}")
        for h in c.hosts:
            c.start_netd(h.index)
        c.wait_ready()
        c.wait_mesh()
        print("\nLeases (netctl leases, run on host 1):")
        print("  " + c.netctl(1, "leases").stdout.strip().replace("\n", "\n  "))
        print("\nEach host's subnet.env and routes:")
        for h in c.hosts:
            with open(h.subnet_file) as fh:
                env = dict(line.split("=", 1) for line in fh.read().split())
            print(f"  host {h.index} ({h.ip}, ns {h.ns}): FLANNEL_SUBNET={env['FLANNEL_SUBNET']} "
                  f"MTU={env['FLANNEL_MTU']}")
            for r in c.route_details(h.index):
                print(f"      {r['dst']} via {r['gateway']} dev {r['dev']}")
        first, last = c.add_container(1), c.add_container(args.hosts)
        print(f"\nping from a container on host 1 ({first.ip}) to one on host {args.hosts} ({last.ip}):")
        result = c.ping(first, last.ip, count=3)
        print("  " + result.stdout.strip().replace("\n", "\n  "))
        ok = result.returncode == 0
        _, ready = c.readyz(1)
        print(f"\nhost 1 /readyz: {json.dumps(ready)}")
        if not ok:
            print("demo FAILED: the ping did not get through; netd log of host 1:\n" + c.netd_log(1)[-3000:])
            return 1
        if args.no_wait or not sys.stdin.isatty():
            print("\ndemo OK; tearing down.")
            return 0
        print("\nThe cluster stays up. Try, in another shell:")
        print(f"  ip netns exec {first.name} ping {last.ip}")
        print(f"  ip netns exec {c.host(1).ns} ip route")
        print(f"  ip netns exec {c.host(2).ns} python3 -m netd.cli.netctl_main "
              f"--etcd-endpoints={c.etcd_endpoint} leases")
        print("Press Ctrl-C (or Enter) to stop netd, etcd and remove every namespace.")
        try:
            sys.stdin.readline()
        except KeyboardInterrupt:
            pass
        print("tearing down ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
