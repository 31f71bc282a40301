"""Service chains as OpenFlow flows and groups, and the path a packet takes through them: pure
functions of the specs and of where each service function's legs are (here, on a peer, or down).

How a frame is steered (the tenant pipeline is in netd.core.tenants):
  * **where it starts**: an IPv4 frame a local endpoint sends (admitted in table 0, reg1 = LOCAL)
    is classified in table 5 (T_CHAINS): each chain's classifier, and a symmetric chain's reversed
    classifier for its replies, is a flow at priority 100 + 2 x spec.priority (+1 for the forward
    way, so traffic wins over replies where one frame would be both). A classified frame goes to
    the chain's first hop (replies: to its last); anything else to the tenant's forwarding (table 10);
  * **to a hop**: to the entry leg of the hop's function (ingress forward, egress for replies):
    ``output`` to its port when it is on this host; when it is on another, tunnelled with the
    tenant's VNI and the leg's **tag** as the frame's source MAC (``0e:00:<leg's address>``), which
    the function's host matches (table 10, tunnel frames only), restores (the source MAC of every
    frame netd admits is ``0a:58:<source address>``: table 0 admits no other) and outputs to that
    leg. A hop of several functions is an OpenFlow select group (``selection_method=hash`` with no
    fields: OVS's symmetric L2-L4 hash), so a flow stays on one function, and the replies of a
    symmetric chain -- hashed the same both ways, over the same buckets -- meet the same one;
  * **from a hop**: a frame that comes back out of a function's exit leg (egress forward, ingress
    for replies) is admitted as SFLEG (reg1 = 3), never as a sender of its own, and matched in
    table 5 by that leg's port and the chain's classifier again (the frame is unchanged, so it is
    still that chain's: the highest-priority classifier that matches it at its start matches it
    here too): to the next hop, or, after the last, to the tenant's forwarding, which delivers it;
    anything else a leg sends is dropped: legs never flood, receive no broadcast, answer no ARP;
  * **a hop down** (no function of the hop with both legs wired): ``onHopDown: drop`` drops the
    chain's traffic where it is classified (and wherever it is in flight); ``bypass`` skips the hop.

Cookies: the chain's flows carry ``NETD`` and, in the low 32 bits, bit 31 set, 22 bits of a hash of
its name (bits 9-30), and, on the flows that take frames out of a function (counted per hop),
the hop (bits 4-8, hop + 1) and the function's index in the hop (bits 0-3): a chain's change
touches its flows only, and the counters of each hop come from its flows' own counters.
"""

from __future__ import annotations

import ipaddress
import itertools
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from netd.core.tenants import (
    LOCAL,
    SFLEG,
    SHARED_COOKIE,
    T_CHAINS,
    T_FORWARD,
    Flow,
    SwitchView,
    clashing_vnis,
    compile_tenant_flows,
    leg_tag,
)
from netd.model.specs import Classifier, ServiceChain, ServiceFunction

IPv4 = ipaddress.IPv4Address
CHAIN_BIT = 0x80000000
#: netd's select groups: ids 0x4e000000-0x4effffff (groups have no cookie: the range is the mark)
GROUP_BASE, GROUP_MASK = 0x4E000000, 0x00FFFFFF
DELIVER, DROP = "deliver", "drop"


CHAIN_ID_MASK = 0x3FFFFF  # 22 bits


def chain_ids(names: Iterable[str]) -> dict[str, int]:
    """A 22-bit id for each chain, for its cookies: from a CRC of its name, so a chain keeps its id
    whatever else changes; a clash takes the next free id, in the names' order (two chains never
    share one: their counters would mix)."""
    return _hashed_ids(names, CHAIN_ID_MASK)


def chain_cookie(chain_id: int, hop: int | None = None, sf_index: int = 0) -> int:
    """The cookie of a chain's flows; with ``hop``, of the flows out of that hop's function number
    ``sf_index`` (whose counters are the hop's)."""
    low = CHAIN_BIT | chain_id << 9
    if hop is not None:
        low |= (hop + 1) << 4 | sf_index
    return SHARED_COOKIE | low


def is_chain_cookie(cookie: int) -> bool:
    return cookie & ~0xFFFFFFFF == SHARED_COOKIE and bool(cookie & CHAIN_BIT)


# -- classifiers ---------------------------------------------------------------------------------

def port_masks(low: int, high: int) -> list[tuple[int, int]]:
    """A port range as the fewest value/mask pairs that cover exactly it (OpenFlow matches ports
    by mask, not by range): 80-80 -> [(80, 0xffff)], 8000-8015 -> [(8000, 0xfff0)]."""
    out: list[tuple[int, int]] = []
    while low <= high:
        size = 1
        while low % (size * 2) == 0 and low + size * 2 - 1 <= high and size < 0x10000:
            size *= 2
        out.append((low, 0xFFFF & ~(size - 1)))
        low += size
    return out


def _port_match(field_name: str, value: int, mask: int) -> str:
    return f"{field_name}={value}" if mask == 0xFFFF else f"{field_name}={value:#x}/{mask:#x}"


def resolve_selector(sel: ipaddress.IPv4Network | str | None,
                     addresses: Mapping[str, IPv4]) -> ipaddress.IPv4Network | None | str:
    """A classifier's source or destination as a network (None: any); an endpoint without an
    address is returned as its name (it cannot be matched yet)."""
    if sel is None or isinstance(sel, ipaddress.IPv4Network):
        return sel
    ip = addresses.get(sel)
    return ipaddress.IPv4Network(ip) if ip is not None else sel


def classifier_matches(c: Classifier, addresses: Mapping[str, IPv4]) -> list[str] | str:
    """The OpenFlow matches (without the tenant's register) that together take exactly the traffic
    ``c`` takes; or why there are none yet (an endpoint it names has no address)."""
    src, dst = resolve_selector(c.source, addresses), resolve_selector(c.destination, addresses)
    for name in (src, dst):
        if isinstance(name, str):
            return f"endpoint {name} has no address yet"
    base: list[str] = [c.protocol or "ip"]
    for field_name, net in (("nw_src", src), ("nw_dst", dst)):
        if isinstance(net, ipaddress.IPv4Network) and net.prefixlen:
            base.append(f"{field_name}={net.network_address if net.prefixlen == 32 else net}")
    sports = [_port_match("tp_src", v, m) for lo, hi in c.sourcePorts for v, m in port_masks(lo, hi)] or [""]
    dports = [_port_match("tp_dst", v, m) for lo, hi in c.destinationPorts for v, m in port_masks(lo, hi)] or [""]
    return [",".join([*base, *(p for p in (s, d) if p)]) for s, d in itertools.product(sports, dports)]


@dataclass(frozen=True)
class Packet:
    """What netctl trace follows: an IPv4 packet of a tenant."""

    src: IPv4
    dst: IPv4
    proto: str = "icmp"  # tcp, udp, icmp
    sport: int | None = None
    dport: int | None = None


def classifier_takes(c: Classifier, addresses: Mapping[str, IPv4], p: Packet) -> bool:
    """Whether the flows of ``classifier_matches(c)`` take packet ``p`` (the same rules, applied to
    one packet: what netctl trace follows)."""
    for sel, ip in ((c.source, p.src), (c.destination, p.dst)):
        net = resolve_selector(sel, addresses)
        if isinstance(net, str) or (net is not None and ip not in net):
            return False
    if c.protocol is not None and c.protocol != p.proto:
        return False
    for ranges, port in ((c.sourcePorts, p.sport), (c.destinationPorts, p.dport)):
        if ranges and (port is None or not any(lo <= port <= hi for lo, hi in ranges)):
            return False
    return True


# -- a chain against what is up ------------------------------------------------------------------

@dataclass(frozen=True)
class HopState:
    index: int
    functions: tuple[str, ...]  # as the spec lists them (the buckets' order)
    live: tuple[str, ...]  # those with both legs wired, in the same order


@dataclass(frozen=True)
class ChainState:
    """A chain against the functions that are up: its hops, and what that means for its traffic."""

    chain: ServiceChain
    vni: int
    hops: tuple[HopState, ...]
    #: why its traffic cannot be classified yet ("" when it can)
    unmatched: str = ""

    @property
    def name(self) -> str:
        return self.chain.metadata.name

    @property
    def missing(self) -> tuple[HopState, ...]:
        return tuple(h for h in self.hops if not h.live)

    @property
    def blocked(self) -> bool:
        """Its classified traffic is dropped (a hop is missing and the chain fails closed)."""
        return bool(self.missing) and self.chain.spec.onHopDown == "drop"

    @property
    def kind(self) -> str:
        """``ready``, ``not_classifying`` or ``hop_missing`` (a metric's label)."""
        return "not_classifying" if self.unmatched else "hop_missing" if self.missing else "ready"

    @property
    def state(self) -> str:
        """One line for operators: ``ready``, or what is missing and what that does."""
        if self.unmatched:
            return f"not classifying: {self.unmatched}"
        if not self.missing:
            return "ready"
        what = ", ".join(f"{h.index + 1} ({'/'.join(h.functions)})" for h in self.missing)
        effect = "its traffic is dropped" if self.blocked else "bypassed"
        return f"hop missing: {what}: {effect}"


def plan_chain(chain: ServiceChain, vni: int, up: Callable[[str], bool], addresses: Mapping[str, IPv4]) -> ChainState:
    """``up(function)``: both of its legs are wired."""
    hops = tuple(HopState(i, tuple(hop), tuple(sf for sf in hop if up(sf))) for i, hop in enumerate(chain.spec.hops))
    ways = [chain.spec.classifier] + ([chain.spec.classifier.reversed()] if chain.spec.symmetric else [])
    unmatched = next((m for m in (classifier_matches(c, addresses) for c in ways) if isinstance(m, str)), "")
    return ChainState(chain, vni, hops, unmatched)


def next_stop(state: ChainState, forward: bool, after: int | None) -> int | str:
    """Where a frame of the chain goes next: a hop's index, DELIVER (the chain is done) or DROP.
    ``after``: the hop it comes out of (None: it is where it starts)."""
    if state.blocked:
        return DROP
    n = len(state.hops)
    if forward:
        order = range(0 if after is None else after + 1, n)
    else:
        order = range(n - 1 if after is None else after - 1, -1, -1)
    for j in order:
        if state.hops[j].live:
            return j
        # (not blocked: a missing hop is bypassed)
    return DELIVER


def chain_priority(chain: ServiceChain, forward: bool) -> int:
    return 100 + 2 * chain.spec.priority + (1 if forward else 0)


# -- flows and groups on one host ----------------------------------------------------------------

@dataclass(frozen=True)
class LegPlace:
    """Where a function's leg is, seen from one host: a port here, or behind a peer's tunnel address."""

    ip: IPv4
    ofport: int | None = None
    tunnel_ip: IPv4 | None = None


@dataclass(frozen=True, order=True)
class Group:
    group_id: int
    #: (bucket_id, actions): the id is the function's place in the hop as the spec lists it, so a
    #: function down or back does not renumber the others (OVS's hash scores buckets by id: flows on
    #: a function that stays up stay on it)
    buckets: tuple[tuple[int, str], ...]

    def text(self) -> str:
        """As ovs-ofctl reads it (and dump-groups prints it)."""
        buckets = ",".join(f"bucket=bucket_id:{i},actions={a}" for i, a in self.buckets)
        return f"group_id={self.group_id},type=select,selection_method=hash,{buckets}"


@dataclass(frozen=True)
class HopCounter:
    """What a counted flow's packets are: frames that came out of function ``sf`` at hop ``hop``
    (numbered from 1, as operators count) of ``chain``."""

    chain: str
    hop: int
    sf: str


@dataclass
class ChainProgram:
    flows: list[Flow] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    states: dict[str, ChainState] = field(default_factory=dict)
    counters: dict[int, HopCounter] = field(default_factory=dict)  # cookie -> what its flows count


def _to_leg(vni: int, place: LegPlace, tunnel_ofport: int | None) -> str:
    if place.ofport is not None:
        return f"output:{place.ofport}"
    if place.tunnel_ip is None or tunnel_ofport is None:
        return "drop"
    return (f"set_field:{leg_tag(place.ip)}->eth_src,set_field:{vni:#x}->tun_id,"
            f"set_field:{place.tunnel_ip}->tun_dst,output:{tunnel_ofport}")


def _hashed_ids(keys: Iterable[str], mask: int) -> dict[str, int]:
    out: dict[str, int] = {}
    taken: set[int] = set()
    for key in sorted(set(keys)):
        n = zlib.crc32(key.encode()) & mask
        while n in taken:
            n = (n + 1) & mask
        taken.add(n)
        out[key] = n
    return out


def group_ids(keys: Iterable[str]) -> dict[str, int]:
    """A group id for each key (``chain/hop/way``): from a hash of the key, so a chain keeps its
    ids whatever else changes; a clash takes the next free id, in the keys' order."""
    return {k: GROUP_BASE | n for k, n in _hashed_ids(keys, GROUP_MASK).items()}


def is_ours_group(group_id: int) -> bool:
    return group_id & ~GROUP_MASK == GROUP_BASE


def leg_places(view: SwitchView) -> dict[str, LegPlace]:
    """Where each function leg that is up is, from this host: wired here, or reported wired by a
    live peer (the view holds remote legs only then)."""
    legs = view.legs
    out = {p.endpoint: LegPlace(p.ip, ofport=p.ofport) for p in view.local if p.endpoint in legs}
    for r in view.remote:
        if r.endpoint in legs and r.tunnel_ip in view.peers:
            out.setdefault(r.endpoint, LegPlace(r.ip, tunnel_ip=r.tunnel_ip))
    return out


def compile_chains(view: SwitchView) -> ChainProgram:
    """Table 5's flows and the select groups on one host, with each chain's state and what each
    counted flow counts. A chain's frames are classified on the hosts with endpoints of its tenant
    (where they start); its functions' hosts steer what comes out of them."""
    prog = ChainProgram()
    clash = clashing_vnis(view.tenants)
    vnis = {t.metadata.name: t.spec.vni for t in view.tenants if t.metadata.name not in clash}
    functions = {f.metadata.name: f for f in view.functions}
    legs = leg_places(view)
    addresses = dict(view.addresses)
    leg_names = view.legs
    origins = {p.tenant for p in view.local if p.endpoint not in leg_names}
    wanted_groups: dict[str, tuple[tuple[int, str], ...]] = {}
    here = {p.tenant for p in view.local}  # a host programs the chains of the tenants it has ports of
    relevant = [c for c in view.chains if c.spec.tenant in here and c.spec.tenant in vnis]
    ids = chain_ids(c.metadata.name for c in relevant)

    def up(sf: str) -> bool:
        f = functions.get(sf)
        return f is not None and f.spec.ingress in legs and f.spec.egress in legs

    def steer(state: ChainState, forward: bool, stop: int | str) -> str:
        if stop == DELIVER:
            return f"resubmit(,{T_FORWARD})"
        if stop == DROP:
            return "drop"
        assert isinstance(stop, int)
        hop = state.hops[stop]
        buckets = tuple((i, _to_leg(state.vni, legs[functions[sf].spec.ingress if forward
                                                     else functions[sf].spec.egress], view.tunnel_ofport))
                        for i, sf in enumerate(hop.functions) if sf in hop.live)
        if len(buckets) == 1:
            return buckets[0][1]
        key = f"{state.name}/{stop}/{'fwd' if forward else 'rev'}"
        wanted_groups[key] = buckets
        return f"group:{{{key}}}"  # the id is filled in once every group is known

    for chain in sorted(relevant, key=lambda c: c.metadata.name):
        tenant, name = chain.spec.tenant, chain.metadata.name
        vni = vnis[tenant]
        state = plan_chain(chain, vni, up, addresses)
        prog.states[name] = state
        if state.unmatched:
            continue
        ways = [(True, chain.spec.classifier)] + ([(False, chain.spec.classifier.reversed())]
                                                   if chain.spec.symmetric else [])
        for forward, classifier in ways:
            matches = classifier_matches(classifier, addresses)
            assert not isinstance(matches, str)
            prio = chain_priority(chain, forward)
            if tenant in origins:
                action = steer(state, forward, next_stop(state, forward, None))
                prog.flows += [Flow(T_CHAINS, prio, f"reg0={vni:#x},reg1={LOCAL},{m}", action,
                                    chain_cookie(ids[name])) for m in matches]
            for hop in state.hops:
                for i, sf in enumerate(hop.functions):
                    if sf not in hop.live:
                        continue
                    spec = functions[sf].spec
                    exit_leg = legs[spec.egress if forward else spec.ingress]
                    if exit_leg.ofport is None:
                        continue  # that function runs on another host: its frames come back out there
                    action = steer(state, forward, next_stop(state, forward, hop.index))
                    cookie = chain_cookie(ids[name], hop.index, i)
                    prog.counters[cookie] = HopCounter(name, hop.index + 1, sf)
                    prog.flows += [Flow(T_CHAINS, prio, f"reg0={vni:#x},reg1={SFLEG},in_port={exit_leg.ofport},{m}",
                                        action, cookie) for m in matches]
    gids = group_ids(wanted_groups)
    prog.groups = sorted(Group(gids[k], b) for k, b in wanted_groups.items())
    prog.flows = [_fill_group(f, gids) for f in prog.flows]
    return prog


def _fill_group(f: Flow, ids: Mapping[str, int]) -> Flow:
    if not f.actions.startswith("group:{"):
        return f
    return Flow(f.table, f.priority, f.match, f"group:{ids[f.actions[len('group:{'):-1]]}", f.cookie)


@dataclass(frozen=True)
class SwitchProgram:
    """Everything netd wants on one host's integration bridge."""

    flows: list[Flow]
    groups: list[Group]
    chains: ChainProgram


def compile_switch(view: SwitchView) -> SwitchProgram:
    """The tenants' flows and the chains' flows and groups: one pure function of the view."""
    chains = compile_chains(view)
    return SwitchProgram(sorted(set(compile_tenant_flows(view) + chains.flows)), chains.groups, chains)


# -- the path of one packet (netctl trace) -------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One hand-off of the packet: on ``host``, ``action`` it:
      * ``output`` to the port of endpoint (or leg) ``target``;
      * ``tunnel`` to host ``target`` (to ``leg``, tagged, when it goes to a function there);
      * ``drop``;
    ``choices``: a hop of several functions, any of which OVS's hash may pick (the path follows
    the first, or the one asked for)."""

    host: str
    action: str
    target: str = ""
    note: str = ""
    leg: str = ""
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Trace:
    chain: str  # "" when no chain takes the packet
    forward: bool
    steps: tuple[Step, ...]
    state: str = ""  # the chain's, as netd.core.chains.ChainState.state says it


@dataclass(frozen=True)
class World:
    """The cluster as etcd describes it: what netctl trace follows a packet through."""

    tenants: Mapping[str, Any]  # name -> TenantNetwork
    endpoints: Mapping[str, Any]  # name -> Endpoint
    functions: Mapping[str, ServiceFunction]
    chains: Sequence[ServiceChain]
    addresses: Mapping[str, IPv4]
    hosts: frozenset[str]  # the live ones
    wired: frozenset[str]  # endpoints their host reports wired


def classify(world: World, tenant: str, p: Packet) -> tuple[ServiceChain | None, bool]:
    """The chain (and way: True its traffic, False a symmetric chain's replies) that takes a packet
    a tenant's endpoint sends, in the flows' order: the highest chain_priority (at one spec
    priority a chain's traffic outranks replies), then the name (validation refuses two chains
    of one priority whose classifiers meet, so the name never decides in a valid store)."""
    best: tuple[int, str] | None = None
    found: tuple[ServiceChain | None, bool] = (None, True)
    for chain in (c for c in world.chains if c.spec.tenant == tenant):
        ways = [(True, chain.spec.classifier)] + ([(False, chain.spec.classifier.reversed())]
                                                   if chain.spec.symmetric else [])
        for forward, c in ways:
            if classifier_takes(c, world.addresses, p):
                rank = (-chain_priority(chain, forward), chain.metadata.name)
                if best is None or rank < best:
                    best, found = rank, (chain, forward)
    return found


def trace_packet(world: World, tenant: str, source: str, p: Packet, via: Mapping[int, str] | None = None) -> Trace:
    """Where a packet that endpoint ``source`` sends goes, host by host, as the compiled flows send
    it (the same decisions: classifier order, next_stop, the legs up). ``via``: for a hop of
    several functions (numbered from 1), the one to follow."""
    t = world.tenants[tenant]
    src = world.endpoints[source]
    host = src.spec.host
    legs = {n for f in world.functions.values() for n in (f.spec.ingress, f.spec.egress)}
    steps: list[Step] = []
    if source in legs:
        return Trace("", True, (Step(host, "drop", note=f"{source} is a service function's leg: it sends "
                                                          "nothing of its own"),))
    if host not in world.hosts or source not in world.wired:
        why = f"its host {host} is not up" if host not in world.hosts else "its host does not report it wired"
        return Trace("", True, (Step(host, "drop", note=f"endpoint {source} sends nothing: {why}"),))

    def leg_up(name: str) -> bool:
        ep = world.endpoints.get(name)
        return ep is not None and ep.spec.host in world.hosts and name in world.wired

    def up(sf: str) -> bool:
        f = world.functions.get(sf)
        return f is not None and leg_up(f.spec.ingress) and leg_up(f.spec.egress)

    def reach(at: str, target_host: str, step: Step) -> str:
        if target_host != at:
            steps.append(Step(at, "tunnel", target_host, step.note, step.target if step.leg else "", step.choices))
        steps.append(Step(target_host, step.action, step.target, step.note, step.leg, step.choices))
        return target_host

    chain, forward = classify(world, tenant, p)
    state = None
    if chain is not None:
        state = plan_chain(chain, t.spec.vni, up, world.addresses)
        stop = next_stop(state, forward, None)
        while isinstance(stop, int):
            hop = state.hops[stop]
            pick = (via or {}).get(stop + 1)
            if pick is not None and pick not in hop.live:
                raise ValueError(f"--via {stop + 1}={pick}: hop {stop + 1} of chain {chain.metadata.name} has "
                                 f"{', '.join(hop.live)} up")
            sf = pick or hop.live[0]
            spec = world.functions[sf].spec
            entry = spec.ingress if forward else spec.egress
            note = f"hop {stop + 1} of chain {chain.metadata.name}: {sf}" + ("" if forward else " (replies)")
            host = reach(host, world.endpoints[entry].spec.host,
                         Step("", "output", entry, note, leg=entry, choices=hop.live if len(hop.live) > 1 else ()))
            stop = next_stop(state, forward, stop)
        if stop == DROP:
            steps.append(Step(host, "drop", note=f"chain {chain.metadata.name}: {state.state}"))
            return Trace(chain.metadata.name, forward, tuple(steps), state.state)
    dest = next((n for n, ip in world.addresses.items() if ip == p.dst and n in world.endpoints
                 and world.endpoints[n].spec.tenant == tenant and n not in legs), None)
    if dest is None and p.dst not in t.spec.subnet and t.spec.gateway is not None:
        dest = next((n for n, ip in world.addresses.items() if ip == t.spec.gateway and n in world.endpoints
                     and world.endpoints[n].spec.tenant == tenant), None)
    name, way, st = (chain.metadata.name, forward, state.state) if chain is not None and state else ("", True, "")
    if dest is None:
        steps.append(Step(host, "drop", note=f"no endpoint of tenant {tenant} has {p.dst}"))
    elif world.endpoints[dest].spec.host not in world.hosts:
        steps.append(Step(host, "drop", note=f"endpoint {dest}'s host {world.endpoints[dest].spec.host} is not up"))
    else:
        reach(host, world.endpoints[dest].spec.host, Step("", "output", dest, f"delivered to endpoint {dest}"))
    return Trace(name, way, tuple(steps), st)


# -- what the hosts report (netctl get chains) ----------------------------------------------------

@dataclass(frozen=True)
class ChainSummary:
    """A chain as the hosts that program it report it."""

    hosts: tuple[str, ...]  # those that program it
    state: str  # "ready", the hosts' one state, or each host's where they differ
    hops: tuple[tuple[int, str, bool], ...]  # (hop, function, up on every host that reports it)
    packets: dict[str, int]  # "hop/function" -> frames out of it (from the function's host)


def summarize_chain(name: str, reports: Mapping[str, Any]) -> ChainSummary:
    """``reports``: host -> its ``status/chains/<host>`` record (decoded JSON: {"chains": {name:
    {"state", "hops": [{"hop", "functions", "up"}], "packets"}}}); what is malformed is left out."""
    mine: dict[str, Mapping[str, Any]] = {}
    for host, report in sorted(reports.items()):
        chains = report.get("chains") if isinstance(report, Mapping) else None
        entry = chains.get(name) if isinstance(chains, Mapping) else None
        if isinstance(entry, Mapping):
            mine[host] = entry
    if not mine:
        return ChainSummary((), "no report: no host programs it (no netd with --ovs-bridge has endpoints "
                                "of its tenant)", (), {})
    states = {host: str(e.get("state", "?")) for host, e in mine.items()}
    distinct = set(states.values())
    state = distinct.pop() if len(distinct) == 1 else "; ".join(f"{h}: {s}" for h, s in states.items())
    up: dict[tuple[int, str], bool] = {}
    for e in mine.values():
        for hop in e.get("hops", []):
            live = set(hop.get("up", []))
            for sf in hop.get("functions", []):
                key = (int(hop.get("hop", 0)), str(sf))
                up[key] = up.get(key, True) and sf in live
    packets: dict[str, int] = {}
    for e in mine.values():
        for key, n in e.get("packets", {}).items():
            packets[key] = packets.get(key, 0) + int(n)
    return ChainSummary(tuple(mine), state, tuple((h, sf, ok) for (h, sf), ok in sorted(up.items())), packets)
