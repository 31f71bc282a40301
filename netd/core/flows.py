"""From ``ovs-ofctl diff-flows BRIDGE FILE`` to the one bundle that makes the bridge hold FILE's flows,
touching only netd's flows that differ.

diff-flows compares the bridge with the file after OVS's own parsing of both (so spelling does not
matter) and prints ``-`` for a flow only the bridge has and ``+`` for one only the file has, each as
``[table=T ]priority=P[,MATCH][ cookie=C] actions=A`` (no table for table 0, no cookie when it is
0). A flow whose match is on both sides changed its
actions: a ``modify_strict`` (its counters and age are kept); or its cookie: deleted and added again
(a modify keeps the old cookie). A ``+`` alone is an ``add``;
a ``-`` alone a ``delete_strict`` -- only when its cookie is netd's: flows of other owners are never
touched, not even one holding a match netd wants (that is reported as a conflict).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from netd.core.chains import Group, is_ours_group
from netd.core.tenants import CANARY_COOKIE, T_CANARY, is_ours

#: ``[table=T ]priority=P[,MATCH][ cookie=C][ idle_timeout=.. hard_timeout=.. importance=..] actions=A``:
#: other owners' flows may carry timeouts and importance (netd's never do); they are kept as read.
_LINE = re.compile(r"^([+-])(?:table=(\d+) )?(\S*?)(?: cookie=(0x[0-9a-f]+))?((?: [a-z_]+=\S+)*) actions=(.*)$")


@dataclass(frozen=True)
class FlowDelta:
    commands: tuple[str, ...]  # the lines of an ovs-ofctl add-flows bundle file
    added: int = 0
    modified: int = 0
    deleted: int = 0
    #: flows netd wants whose match another owner's flow holds: left alone, and reported
    conflicts: tuple[str, ...] = ()
    #: the bundle adds the canary back: the bridge had lost netd's flows (ovs-vswitchd restarted)
    restores_canary: bool = False
    #: select groups added, changed or deleted in the same bundle
    groups_written: int = 0

    @property
    def empty(self) -> bool:
        return not self.commands and not self.groups_written



def _flow_spec(key: str) -> str:
    table, match = key.split(" ", 1)  # "table=10 priority=5,reg0=1" -> "table=10,priority=5,reg0=1"
    return f"{table},{match}" if match else table


def plan_flow_delta(diff: str) -> FlowDelta:
    """The bundle for a diff-flows output. Lines of other shapes (OVS's warnings) are an error."""
    old: dict[str, tuple[int, str]] = {}
    new: dict[str, tuple[int, str]] = {}
    for raw in diff.splitlines():
        if not raw.strip():
            continue
        m = _LINE.match(raw.strip())
        if m is None:
            raise ValueError(f"unexpected diff-flows line: {raw!r}")
        sign, table, match, cookie, _extra, actions = m.groups()
        key = f"table={table or 0} {match}"  # diff-flows leaves out table=0 and a zero cookie
        (new if sign == "+" else old)[key] = (int(cookie or "0", 16), actions)
    commands: list[str] = []
    conflicts: list[str] = []
    added = modified = deleted = 0
    restores_canary = False
    for key, (cookie, actions) in sorted(new.items()):
        if key in old and not is_ours(old[key][0]):
            conflicts.append(f"{_flow_spec(key)} is held by cookie {old[key][0]:#x}")
            continue
        if key in old and old[key][0] != cookie:
            # a modify never changes a flow's cookie (OpenFlow): our flow that moves to another
            # cookie (its tenant's VNI changed) is deleted and added again, in the same bundle
            commands.append(f"delete_strict {_flow_spec(key)}")
        verb = "modify_strict" if key in old and old[key][0] == cookie else "add"
        commands.append(f"{verb} {_flow_spec(key)},cookie={cookie:#x},actions={actions}")
        if key in old:
            modified += 1
        else:
            added += 1
            restores_canary |= key.startswith(f"table={T_CANARY} ") and cookie == CANARY_COOKIE
    for key, (cookie, _) in sorted(old.items()):
        if key not in new and is_ours(cookie):
            commands.append(f"delete_strict {_flow_spec(key)}")
            deleted += 1
    return FlowDelta(tuple(commands), added, modified, deleted, tuple(conflicts), restores_canary)


#: ``group_id=N,type=...`` as ovs-ofctl dump-groups prints one (after a header line)
_GROUP_LINE = re.compile(r"^\s*group_id=(\d+),(.*)$")


def plan_group_delta(dump: str, wanted: Iterable[Group]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """From ``ovs-ofctl dump-groups`` to the group mods of one bundle: (those that must come before
    the flows that use them: add or modify, each as ``group add_or_mod ...``; those that must come
    after the flows that used them are gone: ``group delete ...``). Only netd's group ids (its
    range) are ever deleted; a group whose text is as wanted is left alone (its counters too)."""
    have: dict[int, str] = {}
    for line in dump.splitlines():
        m = _GROUP_LINE.match(line)
        if m:
            have[int(m.group(1))] = f"group_id={m.group(1)},{m.group(2).strip()}"
    want = {g.group_id: g.text() for g in wanted}
    before = tuple(f"group add_or_mod {text}" for gid, text in sorted(want.items()) if have.get(gid) != text)
    after = tuple(f"group delete group_id={gid}" for gid in sorted(have) if gid not in want and is_ours_group(gid))
    return before, after
