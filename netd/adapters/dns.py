"""A DNS server for the published endpoints (UDP; dnslib for the wire format, netd.core.dns for the
answers). It answers for ``--dns-domain`` only; anything else is refused (REFUSED): it is no
recursive resolver, and says so rather than timing out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from dnslib import QTYPE, RCODE, RR, SRV, A, DNSRecord

from netd.core.dns import TTL, Answer, Published, additional, answer

log = logging.getLogger(__name__)


def respond(packet: bytes, endpoints: Iterable[Published], domain: str) -> bytes | None:
    """The reply to one query (None: not a DNS query at all: dropped)."""
    try:
        query = DNSRecord.parse(packet)
    except Exception:  # noqa: BLE001 - dnslib raises DNSError and struct errors alike on garbage
        return None
    reply = query.reply()
    if not query.questions:
        reply.header.rcode = RCODE.FORMERR
        return bytes(reply.pack())
    q = query.questions[0]
    qname, qtype = str(q.qname), QTYPE[q.qtype]
    eps = list(endpoints)
    if not qname.lower().rstrip(".").endswith("." + domain.lower().rstrip(".")):
        reply.header.rcode = RCODE.REFUSED
        return bytes(reply.pack())
    rcode, answers = answer(qname, qtype, eps, domain)
    reply.header.rcode = rcode
    reply.header.aa = 1
    for a in answers:
        reply.add_answer(_rr(a))
    for a in additional(answers, eps, domain):
        reply.add_ar(_rr(a))
    return bytes(reply.pack())


def _rr(a: Answer) -> RR:
    if a.rtype == "A":
        return RR(a.name, QTYPE.A, rdata=A(a.ip), ttl=TTL)
    return RR(a.name, QTYPE.SRV, rdata=SRV(priority=10, weight=10, port=a.port, target=a.target), ttl=TTL)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, records: Callable[[], Iterable[Published]], domain: str) -> None:
        self.records, self.domain = records, domain
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # (a datagram endpoint's)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        out = respond(data, self.records(), self.domain)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


class DnsServer:
    """Serves on (host, port) once started; ``records`` is read for every question (the agent's
    cache of endpoints, kept by its watch)."""

    def __init__(self, records: Callable[[], Iterable[Published]], domain: str) -> None:
        self.records, self.domain = records, domain
        self._transports: dict[tuple[str, int], asyncio.DatagramTransport] = {}

    async def listen(self, host: str, port: int) -> None:
        if (host, port) in self._transports:
            return
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self.records, self.domain),
                                                           local_addr=(host, port))
        self._transports[(host, port)] = transport
        log.info("answering DNS for %s on %s:%d", self.domain, host, port)

    def close(self) -> None:
        for t in self._transports.values():
            t.close()
        self._transports.clear()
