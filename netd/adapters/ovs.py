"""The Switch role on Open vSwitch: netd's integration bridge, its ports and its flows.

Bridges, ports and interfaces go through OVSDB (ovsdbapp); flows through ``ovs-ofctl``: OpenFlow
has no library as well kept, and ``ovs-ofctl diff-flows`` normalises both sides of a comparison
with OVS's own parser, so a resync writes exactly the flows that differ, as one bundle (atomic: a
packet sees the old flows or the new ones). Everything netd makes carries its mark: the bridges and
ports ``external_ids:netd-owner=netd`` (ports also ``netd-endpoint``), the flows their cookie
(netd.core.tenants); nothing else is touched.

OVS facts this relies on (measured with 3.1, docs/DECISIONS.md): a bridge on the kernel datapath
fails where the module is missing while ovs-vsctl still succeeds (so Interface.error and ofport
are checked); flows and port flags are lost when ovs-vswitchd restarts (the canary tells); the
userspace (netdev) datapath sends tunnels only from an address held by an OVS bridge's internal
port (the "br-phy" pattern: ensure_phy).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from netd.core.chains import Group
from netd.core.flows import FlowDelta, plan_flow_delta, plan_group_delta
from netd.core.tenants import CANARY_COOKIE, T_CANARY, Flow, is_ours
from netd.errors import DataplaneError

log = logging.getLogger(__name__)

OWNER = {"netd-owner": "netd"}
TUNNEL_PORT = "netd-vx"
TENANT_VXLAN_PORT = 4789  # IANA's VXLAN port; flannel's vxlan backend has 8472, so the two never meet
PROTOCOLS = ["OpenFlow10", "OpenFlow13", "OpenFlow14", "OpenFlow15"]
_STATS = re.compile(r"cookie=(0x[0-9a-f]+).*?table=(\d+).*?n_packets=(\d+), n_bytes=(\d+)")


@dataclass(frozen=True)
class FlowStat:
    cookie: int
    table: int
    packets: int
    bytes: int


class OvsSwitch:
    def __init__(self, rundir: str = "/var/run/openvswitch", bridge: str = "netd-int", datapath: str = "system",
                 timeout: float = 10.0) -> None:
        self.rundir = rundir
        self.bridge = bridge
        self.datapath = datapath
        self.timeout = timeout
        self._api: Any = None
        self._conn: Any = None

    # -- OVSDB ---------------------------------------------------------------------------------
    @property
    def db(self) -> str:
        return f"unix:{self.rundir}/db.sock"

    def _ovsdb(self) -> Any:
        if self._api is None:
            from ovsdbapp.backend.ovs_idl import connection, idlutils
            from ovsdbapp.schema.open_vswitch import impl_idl

            try:
                helper = idlutils.get_schema_helper(self.db, "Open_vSwitch")
                helper.register_all()
                self._conn = connection.Connection(idl=connection.OvsdbIdl(self.db, helper), timeout=self.timeout)
                # ovsdbapp keeps the connection on the class (one per process); a class of our own per
                # switch lets one process (the tests) talk to several OVS instances
                own = type("NetdOvsdbIdl", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
                self._api = own(self._conn)
            except Exception as exc:  # noqa: BLE001 - ovsdbapp raises many kinds; all mean "no OVSDB"
                self._api = self._conn = None
                raise DataplaneError(f"cannot reach OVSDB at {self.db}: {exc}") from exc
        return self._api

    def _exec(self, *commands: Any) -> None:
        api = self._ovsdb()
        try:
            with api.transaction(check_error=True) as txn:
                for c in commands:
                    txn.add(c)
        except Exception as exc:  # noqa: BLE001
            raise DataplaneError(f"OVSDB transaction on {self.db} failed: {exc}") from exc

    def connected(self) -> bool:
        return self._api is not None and self._conn is not None and self._conn.idl.is_connected

    def ensure_bridge(self) -> None:
        """The integration bridge: fail_mode=secure (with no flows it drops, never learns), our
        datapath, the OpenFlow versions netd speaks."""
        api = self._ovsdb()
        self._exec(api.add_br(self.bridge, may_exist=True, datapath_type=self.datapath),
                   api.db_set("Bridge", self.bridge, ("fail_mode", "secure"), ("protocols", PROTOCOLS),
                              ("external_ids", OWNER)))
        self._wait_ofport(self.bridge)

    def ensure_tunnel(self, local_ip: str) -> int:
        """One flow-based VXLAN port for every peer and tenant (remote_ip and key set per flow)."""
        api = self._ovsdb()
        self._exec(api.add_port(self.bridge, TUNNEL_PORT, may_exist=True),
                   api.db_set("Port", TUNNEL_PORT, ("external_ids", OWNER)),
                   api.db_set("Interface", TUNNEL_PORT, ("type", "vxlan"),
                              ("options", {"remote_ip": "flow", "key": "flow", "local_ip": local_ip,
                                           "dst_port": str(TENANT_VXLAN_PORT)})))
        return self._wait_ofport(TUNNEL_PORT)

    def ensure_phy(self, bridge: str, iface: str) -> None:
        """netdev datapath: the underlay interface on a bridge of its own (NORMAL forwarding) whose
        internal port will hold the tunnel address."""
        api = self._ovsdb()
        self._exec(api.add_br(bridge, may_exist=True, datapath_type=self.datapath),
                   api.db_set("Bridge", bridge, ("fail_mode", "standalone"), ("external_ids", OWNER)),
                   api.add_port(bridge, iface, may_exist=True),
                   api.db_set("Port", iface, ("external_ids", OWNER)))
        self._wait_ofport(iface)

    def ensure_endpoint_port(self, port: str, endpoint: str) -> int:
        api = self._ovsdb()
        self._exec(api.add_port(self.bridge, port, may_exist=True),
                   api.db_set("Port", port, ("external_ids", {**OWNER, "netd-endpoint": endpoint})))
        return self._wait_ofport(port)

    def remove_port(self, port: str) -> None:
        api = self._ovsdb()
        self._exec(api.del_port(port, bridge=self.bridge, if_exists=True))

    def endpoint_ports(self) -> dict[str, str]:
        """netd's endpoint ports on the bridge: port name -> endpoint name."""
        api = self._ovsdb()
        try:
            rows = api.db_list("Port", columns=["name", "external_ids"]).execute(check_error=True)
        except Exception as exc:  # noqa: BLE001
            raise DataplaneError(f"listing OVS ports failed: {exc}") from exc
        return {r["name"]: r["external_ids"]["netd-endpoint"] for r in rows
                if r["external_ids"].get("netd-owner") == "netd" and "netd-endpoint" in r["external_ids"]}

    def ofport(self, name: str) -> int | None:
        api = self._ovsdb()
        try:
            rows = api.db_list("Interface", [name], columns=["ofport", "error"], if_exists=True).execute(
                check_error=True)
        except Exception as exc:  # noqa: BLE001
            raise DataplaneError(f"reading interface {name} failed: {exc}") from exc
        if not rows or rows[0] is None:
            return None
        error = rows[0].get("error")
        if error:
            raise DataplaneError(f"OVS cannot use interface {name}: {error[0] if isinstance(error, list) else error}")
        ofport = rows[0].get("ofport")
        ofport = ofport[0] if isinstance(ofport, list) and ofport else ofport
        return int(ofport) if isinstance(ofport, int) and ofport > 0 else None

    def _wait_ofport(self, name: str) -> int:
        deadline = time.monotonic() + self.timeout
        while True:
            ofport = self.ofport(name)
            if ofport is not None:
                return ofport
            if time.monotonic() > deadline:
                raise DataplaneError(f"OVS gave interface {name} no OpenFlow port in {self.timeout:.0f}s "
                                     f"(is ovs-vswitchd running? datapath {self.datapath!r}?)")
            time.sleep(0.02)

    # -- OpenFlow ------------------------------------------------------------------------------
    def _ofctl(self, cmd: str, *args: str, ok: tuple[int, ...] = (0,), opts: tuple[str, ...] = ()) -> str:
        target = f"unix:{self.rundir}/{self.bridge}.mgmt"
        r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", *opts, cmd, target, *args], capture_output=True,
                           text=True, timeout=self.timeout, env={**os.environ, "OVS_RUNDIR": self.rundir})
        if r.returncode not in ok:
            raise DataplaneError(f"ovs-ofctl {cmd} {self.bridge}: {r.stderr.strip() or r.returncode}")
        return r.stdout

    def sync_flows(self, flows: Iterable[Flow], groups: Iterable[Group] = ()) -> FlowDelta:
        """Make the bridge hold exactly ``flows`` and ``groups`` of netd's: one bundle (``ovs-ofctl
        bundle``: flow and group mods, atomic) of what differs, the groups a flow will use added
        before it, those no flow uses any more deleted after."""
        with tempfile.NamedTemporaryFile("w", prefix="netd-flows-", suffix=".txt") as want:
            want.write("".join(f.text() + "\n" for f in flows))
            want.flush()
            diff = self._ofctl("diff-flows", want.name, ok=(0, 2))  # 2: they differ
        delta = plan_flow_delta(diff)
        for conflict in delta.conflicts:
            log.warning("flow not installed: %s", conflict)
        before, after = plan_group_delta(self._ofctl("dump-groups"), groups)
        lines = [*before, *(f"flow {c}" for c in delta.commands), *after]
        if lines:
            with tempfile.NamedTemporaryFile("w", prefix="netd-bundle-", suffix=".txt") as bundle:
                bundle.write("\n".join(lines) + "\n")
                bundle.flush()
                self._ofctl("bundle", bundle.name)
        return dataclasses.replace(delta, groups_written=len(before) + len(after))

    def canary_present(self) -> bool:
        """False once ovs-vswitchd lost its flows (a restart): then everything must be reinstalled."""
        return bool(self._ofctl("dump-flows", f"table={T_CANARY},cookie={CANARY_COOKIE:#x}/-1").count("cookie="))

    def flow_stats(self, table: int | None = None) -> list[FlowStat]:
        """netd's flows' counters (of one table: a smaller dump)."""
        out = []
        for line in self._ofctl("dump-flows", *([f"table={table}"] if table is not None else [])).splitlines():
            m = _STATS.search(line)
            if m and is_ours(int(m.group(1), 16)):
                out.append(FlowStat(int(m.group(1), 16), int(m.group(2)), int(m.group(3)), int(m.group(4))))
        return out

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.stop()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
        self._api = self._conn = None
