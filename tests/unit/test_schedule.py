"""Placement and reconciling, in tables: every [X-Fleet] option, resources, spread, the tasks."""

from __future__ import annotations

import random

import pytest

from netd.core.schedule import Task, decide_placement, global_units_for, plan_reconcile, sample
from netd.model.units import Machine, unit_from_file, unit_from_yaml

M1 = Machine("m1", "10.0.0.1", {"region": "east", "disk": "ssd"})
M2 = Machine("m2", "10.0.0.2", {"region": "east", "disk": "hdd"})
M3 = Machine("m3", "10.0.0.3", {"region": "west", "disk": "ssd"})
ALL = [M1, M2, M3]


def unit(name: str, x_fleet: str = "", cpu: str = "", memory: str = "", service: str = "") -> object:
    netd = "".join(f"{k}={v}\n" for k, v in (("CPU", cpu), ("Memory", memory), ("Service", service)) if v)
    return unit_from_file(name, f"[Service]\nExecStart=/bin/run\n[X-Fleet]\n{x_fleet}\n[X-Netd]\n{netd}")


def place(units, machines=ALL, current=None, seed=1, known=None):  # type: ignore[no-untyped-def]
    return decide_placement(units, machines, current or {}, random.Random(seed), known)


@pytest.mark.parametrize("x_fleet,allowed", [
    ("MachineID=m2", {"m2"}),
    ("MachineMetadata=region=east", {"m1", "m2"}),
    ("MachineMetadata=region=east\nMachineMetadata=region=west", {"m1", "m2", "m3"}),   # one value of a key
    ('MachineMetadata="region=east" "disk=ssd"', {"m1"}),                                # every key
    ("MachineMetadata=disk=ssd\nMachineMetadata=region=west", {"m3"}),
    ("MachineMetadata=gpu=yes", set()),
])
def test_machine_id_and_metadata_filter(x_fleet, allowed):
    for seed in range(20):
        d = place([unit("a.service", x_fleet)], seed=seed)
        if allowed:
            assert d.placed["a.service"] in allowed, seed
        else:
            assert d.unplaced == {"a.service": "no machine matches MachineMetadata"}


def test_a_machine_id_of_no_live_machine_leaves_the_unit_unplaced():
    assert place([unit("a.service", "MachineID=gone")]).unplaced == {"a.service": "no live machine has that MachineID"}


def test_machine_of_follows_its_peer_placed_earlier_or_in_the_same_pass_and_waits_for_a_missing_one():
    db = unit("db.service", "MachineMetadata=region=west")
    cache = unit("cache.service", "MachineOf=db.service")
    side = unit("side.service", "MachineOf=cache.service")  # a chain of peers
    for seed in range(10):
        d = place([side, cache, db], seed=seed)
        assert d.placed == {"db.service": "m3", "cache.service": "m3", "side.service": "m3"}
    d = place([cache], current={"db.service": "m2"}, known={"db.service": db})
    assert d.placed == {"cache.service": "m2"}
    lonely = place([unit("x.service", "MachineOf=nowhere.service")])
    assert lonely.unplaced == {"x.service": "MachineOf nowhere.service: not placed anywhere"}


def test_conflicts_hold_both_ways_and_by_glob():
    web = [unit(f"web@{i}.service", "Conflicts=web@*.service") for i in (1, 2, 3)]
    for seed in range(10):
        d = place(web, seed=seed)
        assert sorted(d.placed.values()) == ["m1", "m2", "m3"]
    fourth = place(web + [unit("web@4.service", "Conflicts=web@*.service")])
    assert len(fourth.placed) == 3 and set(fourth.placed) == {"web@1.service", "web@2.service", "web@3.service"}
    why = fourth.unplaced["web@4.service"]  # placed last (by name): each machine has one of the others
    assert why.startswith("no machine fits: ") and why.count("conflicts with web@") == 3, why
    # the other's conflict counts too: a unit without Conflicts is kept off a machine whose unit names it
    d = place([unit("plain.service")], current={"a.service": "m1", "b.service": "m2"},
              known={"a.service": unit("a.service", "Conflicts=plain.*"), "b.service": unit("b.service",
                                                                                          "Conflicts=plain.*")})
    assert d.placed == {"plain.service": "m3"}


def test_replaces_takes_the_replaced_units_machine_and_moves_it_elsewhere():
    old = unit("old.service", "MachineMetadata=disk=ssd")
    new = unit("new.service", "Replaces=old.service\nMachineID=m1")
    d = place([new], current={"old.service": "m1"}, known={"old.service": old})
    assert d.placed == {"new.service": "m1", "old.service": "m3"}  # old moved to the other ssd machine
    assert d.evicted == {"old.service": "replaced by new.service on m1"}
    # the replaced unit never comes back next to its replacer
    d = place([old], current={"new.service": "m1"}, known={"new.service": new})
    assert d.placed == {"old.service": "m3"}
    # both ways: ignored (a loop), each is an ordinary unit to the other
    a = unit("a.service", "Replaces=b.service\nMachineID=m1")
    b = unit("b.service", "Replaces=a.service")
    d = place([a], current={"b.service": "m1"}, known={"b.service": b})
    assert d.placed == {"a.service": "m1"} and d.evicted == {}


def test_global_units_are_not_placed_and_run_on_every_matching_machine():
    g = unit("agent.service", "Global=true\nMachineMetadata=disk=ssd")
    assert place([g]).placed == {} and place([g]).unplaced == {}
    assert [m.id for m in ALL if global_units_for(m, [g])] == ["m1", "m3"]
    everywhere = unit("log.service", "Global=true")
    assert all(global_units_for(m, [everywhere, g]) for m in ALL)
    assert global_units_for(M2, [everywhere, g]) == [everywhere]


def test_resources_fit_or_the_unit_waits_saying_why():
    small = [Machine("a", cpu=1000, memory=1 << 30), Machine("b", cpu=500, memory=1 << 30)]
    d = place([unit("big.service", cpu="800m")], small)
    assert d.placed == {"big.service": "a"}
    d = place([unit("huge.service", cpu="2")], small)
    assert d.unplaced == {"huge.service": "no machine fits: 2 machines: not enough CPU"}
    d = place([unit("fat.service", memory="2G")], small)
    assert d.unplaced == {"fat.service": "no machine fits: 2 machines: not enough memory"}
    fill = [unit(f"w@{i}.service", cpu="400m", service=f"s{i}") for i in range(3)]
    d = place(fill, small)
    assert len(d.placed) == 3 and sorted(d.placed.values()) == ["a", "a", "b"]  # 800m on a, 400m on b
    over = place(fill + [unit("w@9.service", cpu="400m", service="s9")], small)
    assert len(over.placed) == 3 and len(over.unplaced) == 1


def test_least_allocated_wins():
    machines = [Machine("a", cpu=4000, memory=8 << 30), Machine("b", cpu=4000, memory=8 << 30)]
    busy = {f"x@{i}.service": unit(f"x@{i}.service", cpu="1", service=f"x{i}") for i in range(3)}
    for seed in range(10):
        d = place([unit("new.service", cpu="500m")], machines, {n: "a" for n in busy}, seed, busy)
        assert d.placed == {"new.service": "b"}
    # without capacities, by unit count
    d = place([unit("n.service")], ALL, {"p.service": "m1", "q.service": "m2"},
              known={"p.service": unit("p.service"), "q.service": unit("q.service")})
    assert d.placed == {"n.service": "m3"}


def test_siblings_spread_before_allocation():
    """Three instances of one service on three machines, even where one machine is emptier."""
    machines = [Machine("a", cpu=8000), Machine("b", cpu=2000), Machine("c", cpu=2000)]
    for seed in range(10):
        d = place([unit(f"web@{i}.service", cpu="100m") for i in (1, 2, 3)], machines, seed=seed)
        assert sorted(d.placed.values()) == ["a", "b", "c"], seed


def test_ties_are_broken_by_the_rng_and_the_same_seed_decides_the_same():
    picks = {place([unit("a.service")], seed=s).placed["a.service"] for s in range(30)}
    assert picks == {"m1", "m2", "m3"}
    assert place([unit("a.service")], seed=7).placed == place([unit("a.service")], seed=7).placed


def test_a_big_cluster_samples_machines_and_still_spreads_and_fits():
    machines = [Machine(f"m{i}", cpu=4000, memory=8 << 30, metadata={"zone": "abc"[i % 3]}) for i in range(300)]
    assert sample(3) == 3 and sample(16) == 16 and sample(300) == 18
    units = [unit(f"api@{i}.service", "MachineMetadata=zone=a", cpu="500m") for i in range(100)]
    d = place(units, machines)
    assert len(d.placed) == 100 and not d.unplaced
    assert all(int(m[1:]) % 3 == 0 for m in d.placed.values())
    assert len(set(d.placed.values())) == 100  # 100 siblings, 100 machines of zone a: one each


def test_yaml_units_place_like_fleet_units():
    u = unit_from_yaml({"apiVersion": "netd/v1", "kind": "Unit", "metadata": {"name": "api"},
                        "spec": {"command": ["x"], "placement": {"machineMetadata": {"region": ["west"]}}}}, "u.yaml")
    assert place([u]).placed == {"api": "m3"}


# -- reconciling --------------------------------------------------------------------------------------

def reconcile(units, desired, placements, machines=ALL, seed=3):  # type: ignore[no-untyped-def]
    return plan_reconcile({u.name: u for u in units}, desired, placements, machines, random.Random(seed))


def test_reconcile_places_the_wanted_and_leaves_the_placed_alone():
    a, b = unit("a.service", "MachineID=m1"), unit("b.service", "MachineID=m2")
    tasks, unplaced = reconcile([a, b], {"a.service": "launched", "b.service": "loaded"}, {"a.service": "m1"})
    assert tasks == [Task("schedule", "b.service", "m2")] and unplaced == {}


@pytest.mark.parametrize("desired,placements,machines,want", [
    ({"a.service": "inactive"}, {"a.service": "m1"}, ALL,
     [Task("unschedule", "a.service", "m1", "not wanted (inactive or destroyed)")]),
    ({}, {"ghost.service": "m1"}, ALL,
     [Task("unschedule", "ghost.service", "m1", "not wanted (inactive or destroyed)")]),
    ({"a.service": "launched"}, {"a.service": "m9"}, ALL,
     [Task("unschedule", "a.service", "m9", "machine m9 is gone"), Task("schedule", "a.service", "m1")]),
])
def test_reconcile_unschedules_what_is_not_wanted_or_lost_its_machine(desired, placements, machines, want):
    a = unit("a.service", "MachineMetadata=region=east\nMachineMetadata=disk=ssd")
    tasks, _ = reconcile([a], desired, placements, machines)
    assert tasks == want


def test_reconcile_moves_a_unit_whose_machine_no_longer_fits():
    a = unit("a.service", "MachineMetadata=disk=ssd")
    relabelled = [Machine("m1", metadata={"disk": "hdd"}), M2, M3]  # m1's metadata changed
    tasks, _ = reconcile([a], {"a.service": "launched"}, {"a.service": "m1"}, relabelled)
    assert tasks == [Task("unschedule", "a.service", "m1", "no longer fits m1: its metadata does not match "
                                                          "MachineMetadata"), Task("schedule", "a.service", "m3")]
    # a follower whose peer moved follows it
    db, cache = unit("db.service", "MachineID=m2"), unit("cache.service", "MachineOf=db.service")
    tasks, _ = reconcile([db, cache], {"db.service": "launched", "cache.service": "launched"},
                         {"db.service": "m2", "cache.service": "m1"})
    assert tasks == [Task("unschedule", "cache.service", "m1", "no longer fits m1: MachineOf db.service is not "
                                                              "there"), Task("schedule", "cache.service", "m2")]


def test_reconcile_of_a_replacing_unit_moves_the_replaced_one():
    old, new = unit("old.service"), unit("new.service", "Replaces=old.service\nMachineID=m1")
    tasks, unplaced = reconcile([old, new], {"old.service": "launched", "new.service": "launched"},
                                {"old.service": "m1"})
    assert tasks[0] == Task("unschedule", "old.service", "m1", "replaced by new.service on m1")
    assert Task("schedule", "new.service", "m1") in tasks
    assert [t for t in tasks if t.unit == "old.service" and t.action == "schedule"][0].machine in ("m2", "m3")
    assert unplaced == {}


def test_reconcile_never_places_global_units_or_templates_and_takes_a_placed_global_back():
    g = unit("g.service", "Global=true")
    t = unit_from_file("t@.service", "[Service]\nExecStart=/bin/t\n")
    tasks, unplaced = reconcile([g, t], {"g.service": "launched", "t@.service": "launched"}, {"g.service": "m1"})
    assert tasks == [Task("unschedule", "g.service", "m1", "a global unit: every matching machine runs it")]
    assert unplaced == {}


def test_reconcile_says_why_a_wanted_unit_has_no_machine():
    tasks, unplaced = reconcile([unit("a.service", "MachineMetadata=gpu=yes")], {"a.service": "launched"}, {})
    assert tasks == [] and unplaced == {"a.service": "no machine matches MachineMetadata"}


def test_a_unit_goes_only_where_its_runtime_is():
    docker = unit_from_yaml({"apiVersion": "netd/v1", "kind": "Unit", "metadata": {"name": "c"},
                             "spec": {"image": "busybox", "command": ["sleep", "1"]}}, "c.yaml")
    fleet = [Machine("plain", runtimes=("netns",)), Machine("dock", runtimes=("docker", "netns")),
             Machine("unsaid")]
    for seed in range(10):
        assert place([docker], fleet, seed=seed).placed["c"] in ("dock", "unsaid")
    d = place([docker], [Machine("plain", runtimes=("netns",))])
    assert d.unplaced == {"c": "no machine fits: 1 machine: no docker runtime there"}


def test_a_units_own_conflicts_are_checked_against_every_unit_of_a_machine_not_only_picky_ones():
    plain = {"db.service": unit("db.service")}  # no Conflicts or Replaces of its own
    d = place([unit("web.service", "Conflicts=db*")], ALL, {"db.service": "m1"}, known=plain)
    assert d.placed["web.service"] != "m1"
    only_m1 = place([unit("web.service", "Conflicts=db*\nMachineID=m1")], ALL, {"db.service": "m1"}, known=plain)
    assert only_m1.unplaced == {"web.service": "no machine fits: 1 machine: conflicts with db.service"}


def test_why_not_names_what_is_free_and_a_replaced_units_resources_count_as_free():
    m = [Machine("a", cpu=1000, memory=1 << 30)]
    busy = {"old.service": unit("old.service", cpu="700m", memory="512M")}
    d = place([unit("x.service", cpu="500m")], m, {"old.service": "a"}, known=busy)
    assert d.unplaced == {"x.service": "no machine fits: 1 machine: not enough CPU"}
    from netd.core.schedule import _MachineLoad, _why_not  # the reason in full: what is free, what is asked

    load = _MachineLoad(m[0])
    load.add(busy["old.service"])
    assert _why_not(unit("x.service", cpu="500m"), load, {}) == "not enough CPU (300m free, 500m asked)"
    assert _why_not(unit("y.service", memory="600M"), load, {}) == \
        f"not enough memory ({(1 << 30) - (512 << 20)} bytes free, {600 << 20} asked)"
    # the unit it replaces frees its share: it fits, and the other goes
    repl = unit("new.service", "Replaces=old.service", cpu="900m", memory="900M")
    assert _why_not(repl, load, {}) is None
    d = place([repl], m, {"old.service": "a"}, known=busy)
    assert d.placed == {"new.service": "a"} and d.evicted == {"old.service": "replaced by new.service on a"}
    assert d.unplaced == {"old.service": "no machine fits: 1 machine: replaced by new.service"}
    load.remove("old.service")
    assert (load.cpu, load.memory, load.units, load.siblings) == (0, 0, {}, {"old": 0})
    load.remove("nothing.service")  # no such unit: nothing changes
    assert (load.cpu, load.memory) == (0, 0)


def test_least_allocated_by_the_scarcer_resource_and_by_count_where_none_is_set():
    from netd.core.schedule import _MachineLoad

    cpu_heavy = Machine("c", cpu=1000, memory=4 << 30)
    load = _MachineLoad(cpu_heavy)
    load.add(unit("a.service", cpu="500m", memory="1G"))
    assert load.share() == 0.5  # max(0.5 of CPU, 0.25 of memory)
    assert load.share(100, 1 << 30) == 0.6
    assert load.share(0, 3 << 30) == 1.0
    no_limits = _MachineLoad(Machine("n"))
    no_limits.add(unit("a.service"))
    assert no_limits.share(extra_units=1) == 2 / 1000
    # between a machine with room by share and one without limits, the smaller share wins
    d = place([unit("x.service", cpu="100m", memory="64M")],
              [Machine("big", cpu=8000, memory=64 << 30), Machine("small", cpu=1000, memory=1 << 30)])
    assert d.placed == {"x.service": "big"}
    d = place([unit("x.service", memory="512M")], [Machine("roomy", memory=8 << 30), Machine("tight",
                                                                                           memory=1 << 30)])
    assert d.placed == {"x.service": "roomy"}


def test_reconcile_frees_what_it_unschedules_for_the_same_pass():
    """A unit taken off a machine that no longer fits it leaves its CPU for a unit placed there now;
    a follower whose peer is taken off follows it (the second round of the same pass)."""
    a = unit("a.service", "MachineMetadata=disk=ssd", cpu="800m")
    b = unit("b.service", "MachineID=x", cpu="800m")
    follower = unit("f.service", "MachineOf=a.service")
    machines = [Machine("x", metadata={"disk": "hdd"}, cpu=1000), Machine("y", metadata={"disk": "ssd"}, cpu=1000)]
    tasks, unplaced = reconcile([a, b, follower], {"a.service": "launched", "b.service": "launched",
                                                   "f.service": "launched"},
                                {"a.service": "x", "f.service": "x"}, machines)
    assert Task("unschedule", "a.service", "x", "no longer fits x: its metadata does not match MachineMetadata") \
        in tasks
    assert Task("unschedule", "f.service", "x", "no longer fits x: MachineOf a.service is not there") in tasks
    assert {(t.unit, t.machine) for t in tasks if t.action == "schedule"} == {("a.service", "y"), ("b.service", "x"),
                                                                            ("f.service", "y")}
    assert unplaced == {}


def test_sample_sizes():
    assert [sample(n) for n in (1, 2, 16, 17, 64, 1000, 100_000)] == [1, 2, 16, 16, 16, 20, 34]


def test_resource_edges_accumulate_and_exact_fits():
    m = [Machine("a", cpu=1000, memory=1 << 30)]
    two = {"p.service": unit("p.service", cpu="300m", memory="256M", service="p"),
           "q.service": unit("q.service", cpu="300m", memory="256M", service="q")}
    cur = {"p.service": "a", "q.service": "a"}
    assert place([unit("x.service", cpu="400m", service="x")], m, cur, known=two).placed == {"x.service": "a"}  # exact
    assert place([unit("x.service", cpu="401m", service="x")], m, cur, known=two).unplaced == \
        {"x.service": "no machine fits: 1 machine: not enough CPU"}
    assert place([unit("x.service", memory="512M", service="x")], m, cur, known=two).placed == {"x.service": "a"}
    assert "not enough memory" in place([unit("x.service", memory="513M", service="x")], m, cur,
                                        known=two).unplaced["x.service"]
    # replacing both frees both
    both = unit("r.service", "Replaces=p.service\nReplaces=q.service", cpu="1", memory="1G")
    d = place([both], m, cur, known=two)
    assert d.placed.get("r.service") == "a" and set(d.evicted) == {"p.service", "q.service"}


def test_globs_that_match_nothing_there_leave_a_machine_eligible():
    busy = {"db.service": unit("db.service")}
    for x_fleet in ("Conflicts=cache*", "Replaces=cache*"):
        d = place([unit("web.service", f"{x_fleet}\nMachineID=m1")], ALL, {"db.service": "m1"}, known=busy)
        assert d.placed == {"web.service": "m1"} and d.evicted == {}, x_fleet


def test_placements_on_machines_that_are_gone_or_of_unknown_units_are_ignored():
    d = place([unit("a.service", "MachineID=m1")], ALL, {"ghost.service": "m1", "b.service": "m9"},
              known={"b.service": unit("b.service")})
    assert d.placed == {"a.service": "m1"}
