"""The README's demo: etcd and 3 namespace hosts running netd (vxlan), a ping across the overlay.
Then (unless --no-tenants) every host also runs its own ovsdb-server + ovs-vswitchd (userspace datapath), and
two tenant networks with one subnet (blue, red) get an endpoint on the first and last host each.

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
    p.add_argument("--tenants", action=argparse.BooleanOptionalAction, default=True,
                   help="two tenant networks on Open vSwitch too (a private ovs-vswitchd per host; default on)")
    p.add_argument("--no-wait", action="store_true", help="tear down right after the ping")
    args = p.parse_args()
    if args.hosts < 2:
        p.error("--hosts must be at least 2")

    print(f"netd demo: etcd + {args.hosts} namespace hosts, backend {args.backend}"
          f"{', tenant networks on Open vSwitch' if args.tenants else ''}")
    with Cluster(args.hosts, ovs=args.tenants) as c:
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
        if ok and args.tenants:
            ok = _tenants(c, args.hosts)
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


def _tenants(c: Cluster, last: int) -> bool:
    """Two tenants with one subnet: an endpoint of each on host 1 and on host ``last``, blue reaches
    blue, red reaches red, and an address only blue has is out of red's reach. True if all held."""
    from integration.tenants import TENANTS, apply_specs, attach, wait_wired

    def show(title: str, text: str) -> None:
        print(f"\n{title}\n  " + text.strip().replace("\n", "\n  "))

    show("Tenant networks (netctl apply -f tenants.yaml):", TENANTS + "\n" + apply_specs(c, TENANTS))
    boxes = [attach(c, 1, "blue", "10.20.0.11"), attach(c, last, "blue", "10.20.0.12"),
             attach(c, 1, "red", "10.20.0.11"), attach(c, last, "red", "10.20.0.12"),
             attach(c, last, "blue", "10.20.0.60", "blue-only")]
    wait_wired(c, *(b.endpoint for b in boxes))
    show("netctl get tenants:", c.netctl(1, "get", "tenants").stdout)
    show("netctl get endpoints:", c.netctl(1, "get", "endpoints").stdout)
    ok = True
    for src, dst, want in ((boxes[0], boxes[1], True), (boxes[2], boxes[3], True), (boxes[2], boxes[4], False)):
        got = src.ping(dst.ip, count=2)
        ok &= got == want
        print(f"  ping {src.endpoint} (host {src.host}) -> {dst.ip}: {'replies' if got else 'no reply'}"
              f"{'' if got == want else '  <- WRONG'}")
    print("  (10.20.0.60 is blue-only's address: red has none)")
    dump = c.ovs_tool(1, "ovs-ofctl", "--no-stats", "dump-flows", "netd-int").splitlines()[1:]
    show(f"host 1's flows (ovs-ofctl --no-stats dump-flows netd-int: {len(dump)} flows, the first 8):",
         "\n".join(line.strip() for line in dump[:8]))
    if not ok:
        print("demo FAILED: tenant traffic; netd log of host 1:\n" + c.netd_log(1)[-3000:])
    return ok


if __name__ == "__main__":
    sys.exit(main())
