"""Tenant networks as OpenFlow flows on a host's integration bridge: a pure function of the specs,
the local endpoints (their ports), the remote ones and the peers' tunnel addresses.

Pipeline (ovs-ofctl syntax; every flow carries a cookie that says it is netd's and which tenant's):
  * table 0, classify: a frame from an endpoint's port is admitted only with that endpoint's MAC
    and (IP or ARP) source address, and tagged with its tenant (reg0 = VNI) and origin (reg1 = 1,
    local); from the tunnel port only with a known VNI from a known peer (reg1 = 2); from a service
    function's leg, IPv4 only, whatever its addresses (reg1 = 3: it carries other endpoints'
    frames); all else drops. Endpoints' IPv4 frames go on to table 5, ARP to table 10;
  * table 5, service chains (netd.core.chains): classified frames steered through the chains'
    functions; everything else goes on to table 10, except what a leg sends of its own (dropped);
  * table 10, forward within the tenant (every match includes reg0, so tenants never meet, even
    with overlapping subnets): ARP requests for a known address are answered here (the ARP
    responder: ARP never leaves its tenant and rarely floods); unicast to a known MAC goes to its
    port or, tunnelled with the tenant's VNI, to its host; broadcast and multicast from a local port
    go to the tenant's other local ports and to every peer host with endpoints of the tenant, from the
    tunnel only to local ports (no loops); unknown unicast drops. A function's legs are no one's
    destination: no forwarding by MAC, no ARP answer, no broadcast; a tunnel frame carrying a leg's
    tag as its source MAC (chains.py) is restored and handed to that leg;
  * table 250: the canary, a flow that matches nothing: when it is gone, ovs-vswitchd restarted (its
    flows with it) and everything is reinstalled.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from netd.core.specplan import endpoint_mac
from netd.model.specs import Endpoint, ServiceChain, ServiceFunction, TenantNetwork

IPv4 = ipaddress.IPv4Address

T_CLASSIFY, T_CHAINS, T_FORWARD, T_CANARY = 0, 5, 10, 250
#: Every netd flow's cookie: "NETD" in the high 32 bits, the tenant's VNI (0: shared) in the low.
COOKIE_TAG = 0x4E455444
COOKIE_MASK = 0xFFFFFFFF00000000
SHARED_COOKIE = COOKIE_TAG << 32
CANARY_COOKIE = SHARED_COOKIE | 0xFFFFFFFF
#: reg1: where the frame came from (an endpoint here, a peer, a function's leg); bit 0 set: from this host
LOCAL, TUNNEL, SFLEG = 1, 2, 3
MULTICAST = "01:00:00:00:00:00/01:00:00:00:00:00"


def tenant_cookie(vni: int) -> int:
    return SHARED_COOKIE | vni


def is_ours(cookie: int) -> bool:
    return cookie & COOKIE_MASK == SHARED_COOKIE


@dataclass(frozen=True, order=True)
class LocalPort:
    """An endpoint wired on this host: its port on the integration bridge."""

    tenant: str
    endpoint: str
    ofport: int
    mac: str
    ip: IPv4


@dataclass(frozen=True, order=True)
class RemoteEndpoint:
    """An endpoint on another host, reached through that host's tunnel address."""

    tenant: str
    endpoint: str
    mac: str
    ip: IPv4
    tunnel_ip: IPv4


@dataclass(frozen=True)
class SwitchView:
    tenants: tuple[TenantNetwork, ...] = ()
    local: tuple[LocalPort, ...] = ()
    #: endpoints on live peers; a function's leg only while its host reports it wired
    remote: tuple[RemoteEndpoint, ...] = ()
    tunnel_ofport: int | None = None  # the flow-based VXLAN port; None: no tunnels (one host)
    peers: tuple[IPv4, ...] = ()  # the other hosts' tunnel addresses
    functions: tuple[ServiceFunction, ...] = ()
    chains: tuple[ServiceChain, ...] = ()
    #: every endpoint's address (a chain's classifier may name one on a host that is down)
    addresses: tuple[tuple[str, IPv4], ...] = ()

    @property
    def legs(self) -> frozenset[str]:
        """The endpoints that are service functions' legs."""
        return frozenset(n for f in self.functions for n in (f.spec.ingress, f.spec.egress))


def leg_tag(ip: IPv4) -> str:
    """The source MAC a frame carries through a tunnel to a function's leg: locally administered,
    unicast, never an endpoint's (those are 0a:58:...), naming the leg by its address."""
    return f"{TAG_PREFIX}:" + ":".join(f"{b:02x}" for b in ip.packed)


TAG_PREFIX = "0e:00"


#: a tagged frame's own source MAC back: 0a:58:<its source address>, as admission required it
RESTORE_SOURCE_MAC = ("move:NXM_OF_IP_SRC[]->NXM_OF_ETH_SRC[0..31],"
                      "set_field:0a:58:00:00:00:00/ff:ff:00:00:00:00->eth_src")


@dataclass(frozen=True, order=True)
class Flow:
    table: int
    priority: int
    match: str
    actions: str
    cookie: int = field(default=SHARED_COOKIE, compare=True)

    def text(self) -> str:
        """As ovs-ofctl add-flows reads it."""
        match = f",{self.match}" if self.match else ""
        return f"table={self.table},priority={self.priority},cookie={self.cookie:#x}{match},actions={self.actions}"


def _arp_responder(vni: int, mac: str, ip: IPv4) -> Flow:
    actions = ("move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],"
               f"set_field:{mac}->eth_src,set_field:2->arp_op,"
               "move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],"
               f"set_field:{mac}->arp_sha,set_field:{ip}->arp_spa,IN_PORT")
    # from local ports only: a request that came through the tunnel goes to the local ports (its
    # sender's host had no answer), and IN_PORT would send the reply back to our own tunnel address
    return Flow(T_FORWARD, 110, f"reg0={vni:#x},reg1={LOCAL},arp,arp_op=1,arp_tpa={ip}", actions,
                tenant_cookie(vni))


def clashing_vnis(tenants: Iterable[TenantNetwork]) -> dict[str, str]:
    """Tenants that share a VNI with another (validation refuses it, but two applies racing, or a
    hand-written key, could store it): name -> why. Neither is programmed: merged, they would not
    be apart."""
    holders: dict[int, list[str]] = {}
    for t in tenants:
        holders.setdefault(t.spec.vni, []).append(t.metadata.name)
    return {name: f"tenant network {name}: VNI {vni} is also {', '.join(n for n in sorted(names) if n != name)}'s; "
                  "neither is programmed until one changes"
            for vni, names in holders.items() if len(names) > 1 for name in names}


def _tunnel_to(vni: int, tunnel_ip: IPv4, ofport: int) -> str:
    return f"set_field:{vni:#x}->tun_id,set_field:{tunnel_ip}->tun_dst,output:{ofport}"


def compile_tenant_flows(view: SwitchView) -> list[Flow]:
    """Every flow the bridge should hold for ``view``, sorted."""
    flows: list[Flow] = [
        Flow(T_CLASSIFY, 0, "", "drop"),
        Flow(T_CHAINS, 0, "", f"resubmit(,{T_FORWARD})"),
        Flow(T_CHAINS, 1, f"reg1={SFLEG}", "drop"),  # what a leg sends that is no chain's next step
        Flow(T_FORWARD, 0, "", "drop"),
        # a tunnel frame tagged for a leg this host does not have (any more): never forwarded by its
        # destination MAC, which would carry it past the function it was steered to
        Flow(T_FORWARD, 115, f"reg1={TUNNEL},dl_src={TAG_PREFIX}:00:00:00:00/ff:ff:00:00:00:00", "drop"),
        Flow(T_CANARY, 1, "", "drop", CANARY_COOKIE),
    ]
    clash = clashing_vnis(view.tenants)
    vnis = {t.metadata.name: t.spec.vni for t in view.tenants if t.metadata.name not in clash}
    legs = view.legs
    local = [p for p in view.local if p.tenant in vnis and p.endpoint not in legs]
    remote = [r for r in view.remote if r.tenant in vnis and view.tunnel_ofport is not None
              and r.tunnel_ip in view.peers and r.endpoint not in legs]
    for p in local:
        vni, cookie = vnis[p.tenant], tenant_cookie(vnis[p.tenant])
        tag = f"set_field:{vni:#x}->reg0,set_field:{LOCAL}->reg1"
        flows.append(Flow(T_CLASSIFY, 100, f"in_port={p.ofport},dl_src={p.mac},ip,nw_src={p.ip}",
                          f"{tag},resubmit(,{T_CHAINS})", cookie))
        flows.append(Flow(T_CLASSIFY, 100, f"in_port={p.ofport},dl_src={p.mac},arp,arp_spa={p.ip},arp_sha={p.mac}",
                          f"{tag},resubmit(,{T_FORWARD})", cookie))
        flows.append(Flow(T_FORWARD, 100, f"reg0={vni:#x},dl_dst={p.mac}", f"output:{p.ofport}", cookie))
        flows.append(_arp_responder(vni, p.mac, p.ip))
    for p in view.local:  # the functions' legs here: they carry chained frames, in both directions
        if p.tenant not in vnis or p.endpoint not in legs:
            continue
        vni, cookie = vnis[p.tenant], tenant_cookie(vnis[p.tenant])
        flows.append(Flow(T_CLASSIFY, 100, f"in_port={p.ofport},ip",
                          f"set_field:{vni:#x}->reg0,set_field:{SFLEG}->reg1,resubmit(,{T_CHAINS})", cookie))
        flows.append(Flow(T_FORWARD, 120, f"reg0={vni:#x},reg1={TUNNEL},ip,dl_src={leg_tag(p.ip)}",
                          f"{RESTORE_SOURCE_MAC},output:{p.ofport}", cookie))
    for r in remote:
        vni = vnis[r.tenant]
        assert view.tunnel_ofport is not None
        # only for frames from here (an endpoint, or a function's exit leg): a peer's frame is for
        # this host's ports, never tunnelled on (two peers with views out of step would bounce it)
        flows.append(Flow(T_FORWARD, 100, f"reg0={vni:#x},reg1={LOCAL:#x}/{LOCAL:#x},dl_dst={r.mac}",
                          _tunnel_to(vni, r.tunnel_ip, view.tunnel_ofport), tenant_cookie(vni)))
        flows.append(_arp_responder(vni, r.mac, r.ip))
    for name, vni in sorted(vnis.items()):
        cookie = tenant_cookie(vni)
        ports = sorted(p.ofport for p in local if p.tenant == name)
        hosts = sorted({r.tunnel_ip for r in remote if r.tenant == name})
        if view.tunnel_ofport is not None:
            for peer in sorted(set(view.peers)):  # frames of this tenant from any peer (its endpoints may be new)
                flows.append(Flow(T_CLASSIFY, 100, f"in_port={view.tunnel_ofport},tun_id={vni:#x},tun_src={peer}",
                                  f"set_field:{vni:#x}->reg0,set_field:{TUNNEL}->reg1,resubmit(,{T_FORWARD})", cookie))
        to_local = [f"output:{p}" for p in ports]
        to_peers = [_tunnel_to(vni, h, view.tunnel_ofport) for h in hosts] if view.tunnel_ofport is not None else []
        if ports:
            flows.append(Flow(T_FORWARD, 50, f"reg0={vni:#x},reg1={LOCAL},dl_dst={MULTICAST}",
                              ",".join(to_local + to_peers), cookie))
            flows.append(Flow(T_FORWARD, 50, f"reg0={vni:#x},reg1={TUNNEL},dl_dst={MULTICAST}", ",".join(to_local),
                              cookie))
    return sorted(set(flows))


def flows_by_tenant(flows: Iterable[Flow]) -> dict[int, list[Flow]]:
    """Flows grouped by the VNI in their cookie (0: shared)."""
    out: dict[int, list[Flow]] = {}
    for f in flows:
        out.setdefault(f.cookie & 0xFFFFFFFF, []).append(f)
    return out


@dataclass(frozen=True)
class LocalWant:
    """An endpoint this host must wire: what the wiring needs."""

    endpoint: str
    tenant: TenantNetwork
    ip: IPv4
    mac: str
    mtu: int
    gateway: IPv4 | None  # its default route: the tenant's gateway, unless it is the gateway (the router)


def endpoints_for(objects: Iterable[object], addresses: dict[str, IPv4], node: str, hosts: dict[str, IPv4],
                  default_mtu: int, reported: Mapping[str, str] | None = None,
                  ) -> tuple[list[LocalWant], list[RemoteEndpoint], list[str]]:
    """Split the stored endpoints: those of this node (to wire), the others' on live hosts (to
    reach through their tunnel address), and why the rest are left out. A service function's leg
    on another host counts only while that host reports it wired (``reported``: endpoint -> its
    host's report): a function is up, for a chain, when both its legs are."""
    objs = list(objects)
    tenants = {o.metadata.name: o for o in objs if isinstance(o, TenantNetwork)}
    legs = {n for o in objs if isinstance(o, ServiceFunction) for n in (o.spec.ingress, o.spec.egress)}
    reported = reported or {}
    local: list[LocalWant] = []
    remote: list[RemoteEndpoint] = []
    skipped: list[str] = []
    for ep in sorted((o for o in objs if isinstance(o, Endpoint)), key=lambda o: o.metadata.name):
        name, tenant, ip = ep.metadata.name, tenants.get(ep.spec.tenant), addresses.get(ep.metadata.name)
        if tenant is None or ip is None:
            skipped.append(f"{name}: " + ("no tenant network " + ep.spec.tenant if tenant is None else "no address"))
        elif ep.spec.host == node:
            gateway = tenant.spec.gateway if tenant.spec.gateway != ip else None
            local.append(LocalWant(name, tenant, ip, endpoint_mac(ip), tenant.spec.mtu or default_mtu, gateway))
        elif ep.spec.host in hosts and name in legs and reported.get(name) != "wired":
            skipped.append(f"{name}: a service function's leg that host {ep.spec.host} does not report wired "
                           f"({reported.get(name, 'no report')})")
        elif ep.spec.host in hosts:
            remote.append(RemoteEndpoint(ep.spec.tenant, name, endpoint_mac(ip), ip, hosts[ep.spec.host]))
        else:
            skipped.append(f"{name}: its host {ep.spec.host} is not up (no record under hosts/)")
    return local, remote, skipped
