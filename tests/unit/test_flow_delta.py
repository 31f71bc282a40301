"""diff-flows output (as ovs-ofctl 3.1 prints it) -> the bundle netd applies."""

import pytest

from netd.core.flows import plan_flow_delta

OURS, THEIRS = "0x4e45544400001389", "0x99"


def test_adds_modifies_and_deletes_only_what_differs_and_only_ours():
    diff = (f"-table=5 priority=7 cookie={THEIRS} actions=drop\n"
            f"-table=10 priority=100,reg0=0x1389,dl_dst=0a:58:0a:14:00:03 cookie={OURS} actions=output:2\n"
            f"+table=10 priority=100,reg0=0x1389,dl_dst=0a:58:0a:14:00:03 cookie={OURS} actions=output:3\n"
            f"+table=10 priority=50,reg0=0x1389 cookie={OURS} actions=drop\n"
            f"-table=250 priority=1 cookie=0x4e455444ffffffff actions=drop\n")
    delta = plan_flow_delta(diff)
    assert delta.commands == (
        f"modify_strict table=10,priority=100,reg0=0x1389,dl_dst=0a:58:0a:14:00:03,cookie={OURS},actions=output:3",
        f"add table=10,priority=50,reg0=0x1389,cookie={OURS},actions=drop",
        "delete_strict table=250,priority=1")
    assert (delta.added, delta.modified, delta.deleted, delta.conflicts) == (1, 1, 1, ())


def test_a_match_another_owner_holds_is_left_alone_and_reported():
    diff = (f"-table=10 priority=100,reg0=0x1 cookie={THEIRS} actions=drop\n"
            f"+table=10 priority=100,reg0=0x1 cookie={OURS} actions=output:1\n")
    delta = plan_flow_delta(diff)
    assert delta.empty and delta.conflicts == (f"table=10,priority=100,reg0=0x1 is held by cookie {THEIRS}",)


def test_table_zero_and_cookie_zero_as_diff_flows_prints_them():
    diff = (f"+priority=100,arp,in_port=1,dl_src=0a:58:0a:14:00:02 cookie={OURS} actions=resubmit(,10)\n"
            "-priority=5,in_port=3 actions=drop\n"  # someone's, cookie 0
            "-table=3 priority=1 cookie=0x4e45544400000000 actions=drop\n")
    assert plan_flow_delta(diff).commands == (
        f"add table=0,priority=100,arp,in_port=1,dl_src=0a:58:0a:14:00:02,cookie={OURS},actions=resubmit(,10)",
        "delete_strict table=3,priority=1")


def test_other_owners_flows_with_timeouts_and_importance_are_read_and_left_alone():
    diff = (f"-table=40 priority=5,ip cookie={THEIRS} idle_timeout=300 hard_timeout=60 importance=3 actions=drop\n"
            "-priority=3 idle_timeout=10 actions=drop\n"  # as ovs-ofctl 3.1 prints them
            f"+table=40 priority=5,ip cookie={OURS} actions=output:1\n")
    delta = plan_flow_delta(diff)
    assert delta.empty and delta.conflicts == (f"table=40,priority=5,ip is held by cookie {THEIRS}",)


def test_a_flow_that_changes_cookie_is_deleted_and_added_again_in_the_bundle():
    new = OURS.replace("1389", "138a")  # its tenant's VNI changed 5001 -> 5002
    diff = (f"-priority=100,ip,in_port=2,nw_src=10.20.0.2 cookie={OURS} actions=set_field:0x1389->reg0\n"
            f"+priority=100,ip,in_port=2,nw_src=10.20.0.2 cookie={new} actions=set_field:0x138a->reg0\n")
    delta = plan_flow_delta(diff)
    assert delta.commands == (
        "delete_strict table=0,priority=100,ip,in_port=2,nw_src=10.20.0.2",
        f"add table=0,priority=100,ip,in_port=2,nw_src=10.20.0.2,cookie={new},actions=set_field:0x138a->reg0")
    assert (delta.added, delta.modified, delta.deleted) == (0, 1, 0)


def test_no_diff_no_bundle_and_strange_lines_are_errors():
    assert plan_flow_delta("").empty and plan_flow_delta("\n").empty
    with pytest.raises(ValueError, match="unexpected diff-flows line"):
        plan_flow_delta("ovs-ofctl: something went wrong\n")


def test_a_bundle_that_adds_the_canary_back_is_a_reinstall():
    canary = "table=250 priority=1 cookie=0x4e455444ffffffff actions=drop"
    other = f"table=10 priority=50,reg0=0x1389 cookie={OURS} actions=drop"
    assert plan_flow_delta(f"+{canary}\n+{other}\n").restores_canary  # an empty bridge filled again
    assert not plan_flow_delta(f"+{other}\n").restores_canary  # a change, canary in place
    assert not plan_flow_delta(f"-{canary}\n").restores_canary  # the canary removed is not restored
    # the canary's match held by another cookie: modified, not restored
    assert not plan_flow_delta(f"-{canary.replace('ffffffff', 'fffffffe')}\n+{canary}\n").restores_canary
    # a flow of another table with the canary's cookie is not the canary
    assert not plan_flow_delta(f"+{canary.replace('table=250', 'table=251')}\n").restores_canary
    assert not plan_flow_delta(f"+{canary.replace('ffffffff', 'fffffffe')}\n").restores_canary


def test_counts_of_a_bigger_bundle_and_what_a_conflict_or_blank_line_leaves_alone():
    diff = "\n".join([
        f"-table=10 priority=100,reg0=0x1 cookie={THEIRS} actions=drop",  # a conflict first
        f"+table=10 priority=100,reg0=0x1 cookie={OURS} actions=output:1",
        "",
        *(f"-table=10 priority=90,reg0={r} cookie={OURS} actions=output:1" for r in ("0x2", "0x3")),
        *(f"+table=10 priority=90,reg0={r} cookie={OURS} actions=output:2" for r in ("0x2", "0x3")),
        *(f"+table=10 priority=80,reg0={r} cookie={OURS} actions=drop" for r in ("0x4", "0x5")),
        *(f"-table=10 priority=70,reg0={r} cookie={OURS} actions=drop" for r in ("0x6", "0x7")),
        "+table=250 priority=1 cookie=0x4e455444ffffffff actions=drop",  # the canary, then a later table
        f"+table=251 priority=1 cookie={OURS} actions=drop"])
    delta = plan_flow_delta(diff)
    assert (delta.added, delta.modified, delta.deleted) == (4, 2, 2) and len(delta.conflicts) == 1
    assert delta.restores_canary and len(delta.commands) == 8


def test_group_mods_add_or_modify_what_differs_and_delete_only_netds_groups_no_longer_wanted():
    from netd.core.chains import Group
    from netd.core.flows import plan_group_delta

    keep = Group(0x4E000001, ((0, "output:1"), (1, "output:2")))
    change = Group(0x4E000002, ((0, "output:3"), (1, "output:4")))
    new = Group(0x4E000003, ((1, "output:5"),))
    dump = ("OFPST_GROUP_DESC reply (OF1.5) (xid=0x2):\n"
            f" {keep.text()}\n"
            " group_id=1308622850,type=select,selection_method=hash,bucket=bucket_id:0,actions=output:3\n"
            " group_id=1308622852,type=select,selection_method=hash,bucket=bucket_id:0,actions=drop\n"  # netd's, gone
            " group_id=7,type=select,bucket=bucket_id:0,actions=drop\n")  # someone else's
    before, after = plan_group_delta(dump, [keep, change, new])
    assert before == (f"group add_or_mod {change.text()}", f"group add_or_mod {new.text()}")
    assert after == ("group delete group_id=1308622852",)
    assert plan_group_delta(dump, []) == ((), ("group delete group_id=1308622849", "group delete group_id=1308622850",
                                               "group delete group_id=1308622852"))
    assert plan_group_delta("", [keep]) == ((f"group add_or_mod {keep.text()}",), ())
    assert new.text() == "group_id=1308622851,type=select,selection_method=hash,bucket=bucket_id:1,actions=output:5"
