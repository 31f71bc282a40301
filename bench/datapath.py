"""Data path throughput: kernel VXLAN vs netd udp (offloads) vs netd udp (forced plain).

Two namespace hosts per mode, one container on each; all three clusters stay up side by side
so rounds can be interleaved (mode A, B, C, A, B, C, ...): this machine is noisy, so only ratios
measured in one run mean anything. Per mode: iperf3 TCP single stream and UDP with 64-byte
payloads; medians, ratios to kernel VXLAN, and the forwarder's CPU seconds per Gbit moved
(netd processes on both hosts; kernel VXLAN has no forwarder process to measure).

The clusters' control planes run with their production defaults (etcd's 100 ms tick, netd's
5 s resync), not the tests' fast ones: three idle control planes with test settings took 5% of
this 2-core machine, a tax on the CPU-bound modes (netd's) and not on kernel VXLAN, which is
latency-bound with CPU to spare.

Run: python bench/datapath.py [--rounds 3] [--seconds 8]    (--short: a CI smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from integration.cluster import Cluster, Container, in_ns  # noqa: E402

MODES = {
    "kernel-vxlan": ({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}, []),
    "netd-udp": ({"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}, []),
    "netd-udp-plain": ({"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}, ["--udp-offloads=off"]),
}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime of the whole process
    return total / TICKS


def iperf(client: Container, server: Container, seconds: float, udp: bool, port: int = 5201) -> dict:
    srv = subprocess.Popen(in_ns(server.name, "iperf3", "-s", "-1", "-J", "-p", str(port)), stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.3)
    args = ["iperf3", "-c", str(server.ip), "-t", str(seconds), "-J", "-p", str(port)]
    if udp:
        args += ["-u", "-b", "0", "-l", "64"]
    cli = subprocess.run(in_ns(client.name, *args), capture_output=True, text=True, timeout=seconds + 30)
    server_out, _ = srv.communicate(timeout=30)
    return {"client": json.loads(cli.stdout), "server": json.loads(server_out)}


def measure(cluster: Cluster, a: Container, b: Container, seconds: float) -> dict[str, float]:
    pids = [p for p in (cluster.netd_pid(1), cluster.netd_pid(2)) if p]
    cpu0 = cpu_seconds(pids)
    tcp = iperf(a, b, seconds, udp=False)
    cpu = cpu_seconds(pids) - cpu0
    gbit = tcp["server"]["end"]["sum_received"]["bits_per_second"] / 1e9
    udp = iperf(a, b, seconds, udp=True)
    s = udp["server"]["end"]["sum"]
    kpps = (s["packets"] - s["lost_packets"]) / s["seconds"] / 1e3
    moved_gbit = gbit * seconds
    return {"tcp_gbit": gbit, "udp64_kpps": kpps,
            "cpu_per_gbit": cpu / moved_gbit if pids and moved_gbit else float("nan"),
            "retransmits": float(tcp["client"]["end"]["sum_sent"].get("retransmits", 0))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--short", action="store_true", help="1 round of 2 s: a smoke test, not a measurement")
    args = p.parse_args()
    if args.short:
        args.rounds, args.seconds = 1, 2
    clusters: dict[str, tuple[Cluster, Container, Container]] = {}
    try:
        for mode, (config, flags) in MODES.items():
            c = Cluster(2, etcd_tick_ms=100)
            c.set_config(config)
            for i in (1, 2):
                c.start_netd(i, *flags, "--log-level=info", resync=5.0)
            c.wait_ready()
            c.wait_mesh()
            clusters[mode] = (c, c.add_container(1), c.add_container(2))
        results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for r in range(args.rounds):
            for mode, (c, a, b) in clusters.items():
                m = measure(c, a, b, args.seconds)
                results[mode].append(m)
                cpu = "n/a (in kernel)" if mode == "kernel-vxlan" else f"{m['cpu_per_gbit']:.3f} s/Gbit"
                print(f"round {r + 1} {mode:<15} TCP {m['tcp_gbit']:6.2f} Gbit/s ({m['retransmits']:.0f} retr)  "
                      f"UDP64 {m['udp64_kpps']:6.1f} kpps  forwarder CPU {cpu}", flush=True)
        med = {m: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for m, rs in results.items()}
        base = med["kernel-vxlan"]
        print(f"\nmedians of {args.rounds} interleaved rounds of {args.seconds:g} s; ratios to kernel VXLAN")
        print(f"{'mode':<15} {'TCP Gbit/s':>10} {'ratio':>6} {'UDP64 kpps':>10} {'ratio':>6} {'CPU s/Gbit':>10}")
        for mode, m in med.items():
            cpu = "n/a" if mode == "kernel-vxlan" else f"{m['cpu_per_gbit']:.3f}"
            print(f"{mode:<15} {m['tcp_gbit']:>10.2f} {m['tcp_gbit'] / base['tcp_gbit']:>6.2f} "
                  f"{m['udp64_kpps']:>10.1f} {m['udp64_kpps'] / base['udp64_kpps']:>6.2f} {cpu:>10}")
        off, plain = med["netd-udp"]["cpu_per_gbit"], med["netd-udp-plain"]["cpu_per_gbit"]
        print(f"CPU per Gbit/s with offloads = {off / plain:.3f} of plain mode")
        if any(m["tcp_gbit"] <= 0 or m["udp64_kpps"] <= 0 for m in med.values()):
            print("FAILED: a mode moved no traffic")
            return 1
        return 0
    finally:
        for c, _, _ in clusters.values():
            c.close()


if __name__ == "__main__":
    sys.exit(main())
