"""Traffic tools run inside namespaces by scenario tests: `python -m integration.tools CMD ...`.

  tcp-recv PORT              accept one connection, print "<bytes> <sha256>" at EOF
  tcp-send IP PORT MBYTES    send MBYTES of seeded pseudo-random data, print "<bytes> <sha256>"
  tcp-echo PORT...           print "listening", then for ever: each connection on any PORT is read
                             to EOF and answered "<bytes> <sha256>"
  tcp-flows IP PORT N KB SPORT TIMEOUT
                             N connections to IP:PORT from source ports SPORT..SPORT+N-1, each sending
                             KB KiB and reading the answer; print JSON {sport: "ok" or the error}
  udp-recv PORT SECONDS      print JSON {received, corrupt} for datagrams that carry their own digest
  udp-send IP PORT N SIZES.. send N datagrams of those sizes (cycled) with a digest, print N
  raw-udp IP PORT HEXFILE    send each line of HEXFILE (hex) as one datagram from port 0
  random-udp IP PORT N SEED [DST SOURCE...]
                             send N datagrams: random bytes of random lengths (1..1500), or, with
                             DST and SOURCEs, three in four built to get past each check in turn
                             (integration.packets.hostile_rx: valid checksums, lying lengths, every
                             IHL, fragments, ...) with inner sources from SOURCEs, and some empty
  flannel-udp TUN PORT SUBNET=IP...
                             a flannel udp host's data path: open TUN (IFF_TUN|IFF_NO_PI, as
                             flannel's proxy does), print "listening", then send each packet read
                             from it to PORT at the IP leasing its destination, unframed, and write
                             each datagram received on PORT to the TUN
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import random
import select
import socket
import struct
import sys
import time

CHUNK = 1 << 20


def family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def dual_udp_socket(port: int) -> socket.socket:
    """A UDP socket on `port` that receives IPv4 and IPv6 alike (IPv4 only where IPv6 is off)."""
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
    except OSError:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
    return s


def dual_tcp_server(port: int) -> socket.socket:
    try:
        return socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    except OSError:
        return socket.create_server(("0.0.0.0", port))


def tcp_recv(port: int) -> None:
    srv = dual_tcp_server(port)
    print("listening", flush=True)
    conn, _ = srv.accept()
    h, n = hashlib.sha256(), 0
    while data := conn.recv(CHUNK):
        h.update(data)
        n += len(data)
    print(n, h.hexdigest(), flush=True)


def tcp_send(ip: str, port: int, mbytes: int) -> None:
    rng = random.Random(42)
    h, n = hashlib.sha256(), 0
    with socket.create_connection((ip, port), timeout=60) as s:
        for _ in range(mbytes):
            data = rng.randbytes(CHUNK)
            s.sendall(data)
            h.update(data)
            n += len(data)
    print(n, h.hexdigest(), flush=True)


def udp_recv(port: int, seconds: float) -> None:
    s = dual_udp_socket(port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.settimeout(0.2)
    print("listening", flush=True)
    got, corrupt, deadline = 0, 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = s.recv(65535)
        except TimeoutError:
            continue
        got += 1
        if len(data) < 8 or hashlib.sha256(data[8:]).digest()[:8] != data[:8]:
            corrupt += 1
    print(json.dumps({"received": got, "corrupt": corrupt}), flush=True)


def udp_send(ip: str, port: int, sizes: list[int], count: int) -> None:
    s = socket.socket(family(ip), socket.SOCK_DGRAM)
    rng = random.Random(7)
    for i in range(count):
        body = rng.randbytes(max(0, sizes[i % len(sizes)] - 8))
        s.sendto(hashlib.sha256(body).digest()[:8] + body, (ip, port))
        if i % 50 == 49:
            time.sleep(0.002)  # a steady rate, not a burst test
    print(count, flush=True)


def raw_udp(ip: str, port: int, hexfile: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n = 0
    with open(hexfile) as fh:
        for line in fh:
            if line.strip():
                s.sendto(bytes.fromhex(line.strip()), (ip, port))
                n += 1
    print(n, flush=True)


def random_udp(ip: str, port: int, n: int, seed: int, dst: str | None = None, sources: list[str] | None = None) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    rng = random.Random(seed)
    pool = rng.randbytes(1 << 20)
    sent = 0
    for i in range(n):
        size = rng.randint(1, 1500)
        off = rng.randint(0, len(pool) - size)
        data = bytearray(pool[off:off + size])
        if dst and sources and i % 4:
            from integration.packets import hostile_rx  # (tools.py also runs alone, copied onto the VMs)

            data = bytearray(hostile_rx(rng, sources, dst) if i % 1000 else b"")
        elif i % 4 == 0 and size >= 20:  # a quarter look like IPv4 headers, to get past the first check
            data[0] = 0x45
            struct.pack_into("!H", data, 2, size)
        while True:
            try:
                s.sendto(data, (ip, port))
                break
            except BlockingIOError:
                time.sleep(0.001)
        sent += 1
        if i % 2000 == 1999:
            time.sleep(0.003)  # stay under the receiver's socket buffer
    print(sent, flush=True)


TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


def flannel_udp(tun: str, port: int, routes: list[str]) -> None:
    """flannel's udp proxy (proxy_amd64.c) in its essentials: raw inner packets in UDP, one route
    per lease (subnet -> PublicIP), no check of who sent a datagram."""
    table = [(ipaddress.IPv4Network(r.split("=")[0]), r.split("=")[1]) for r in routes]
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tun.encode(), IFF_TUN | IFF_NO_PI))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    print("listening", flush=True)
    while True:
        ready, _, _ = select.select([fd, sock], [], [])
        if fd in ready:
            pkt = os.read(fd, 65535)
            dst = ipaddress.IPv4Address(pkt[16:20]) if len(pkt) >= 20 and pkt[0] >> 4 == 4 else None
            peer = next((ip for net, ip in table if dst is not None and dst in net), None)
            if peer is not None:
                sock.sendto(pkt, (peer, port))
        if sock in ready:
            os.write(fd, sock.recv(65535))


def tcp_echo(ports: list[int]) -> None:
    import threading

    def serve(srv: socket.socket) -> None:
        while True:
            conn, _ = srv.accept()
            with conn:
                h, n = hashlib.sha256(), 0
                while chunk := conn.recv(65536):
                    h.update(chunk)
                    n += len(chunk)
                conn.sendall(f"{n} {h.hexdigest()}\n".encode())

    for port in ports:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(64)
        threading.Thread(target=serve, args=(srv,), daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


def tcp_flows(ip: str, port: int, count: int, kbytes: int, first_sport: int, timeout: float) -> None:
    data = random.Random(7).randbytes(kbytes * 1024)
    want = f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    out: dict[int, str] = {}
    for sport in range(first_sport, first_sport + count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(timeout)
        try:
            s.bind(("0.0.0.0", sport))
            s.connect((ip, port))
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(4096):
                got += chunk
            out[sport] = "ok" if got.decode().strip() == want else f"bad answer {got[:80]!r}"
        except OSError as exc:
            out[sport] = f"{type(exc).__name__}: {exc}"
        finally:
            s.close()
    print(json.dumps(out), flush=True)


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "tcp-recv":
        tcp_recv(int(args[0]))
    elif cmd == "tcp-send":
        tcp_send(args[0], int(args[1]), int(args[2]))
    elif cmd == "tcp-echo":
        tcp_echo([int(a) for a in args])
    elif cmd == "tcp-flows":
        tcp_flows(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]), float(args[5]))
    elif cmd == "udp-recv":
        udp_recv(int(args[0]), float(args[1]))
    elif cmd == "udp-send":
        udp_send(args[0], int(args[1]), [int(x) for x in args[3:]], int(args[2]))
    elif cmd == "raw-udp":
        raw_udp(args[0], int(args[1]), args[2])
    elif cmd == "random-udp":
        random_udp(args[0], int(args[1]), int(args[2]), int(args[3]), *(args[4:5] or [None]), args[5:] or None)
    elif cmd == "flannel-udp":
        flannel_udp(args[0], int(args[1]), args[2:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
