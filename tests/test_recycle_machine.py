"""Recycling in the state machine: a worker that asks to be replaced is retired only once
its replacement is READY, within the surge, and never by more than the roll in a roll."""

from __future__ import annotations

from test_rollout import BOOTING, DRAINING, READY, booted

from rollover.core.rollout import Retire


def ask(d, pid: int, reason: str = "max_requests: served 1000 of 1000", *,
        overdue: bool = False) -> None:
    d.machine.recycle_requested(d.now, pid, reason, overdue=overdue)


def test_the_worker_that_asked_is_retired_once_its_replacement_is_ready() -> None:
    d = booted(target=4)
    asker = d.pids(READY)[2]
    ask(d, asker)
    step = d.tick()
    assert len(step.spawned) == 1 and step.retired == []  # new first, nobody retired yet
    d.advance(1.5)
    assert d.tick().actions == []  # still booting: the asker keeps serving
    d.ready(*step.spawned)
    step2 = d.tick()
    assert step2.retired == [asker]
    (retire,) = [a for a in step2.actions if isinstance(a, Retire)]
    assert retire.recycled == "max_requests: served 1000 of 1000"
    assert d.machine.recycles == 1
    assert d.machine.ready_count == 4  # never below target


def test_asking_again_changes_nothing() -> None:
    d = booted(target=2)
    asker = d.pids(READY)[0]
    ask(d, asker)
    assert len(d.tick().spawned) == 1
    ask(d, asker)
    ask(d, asker)
    assert d.tick().spawned == []


def test_replacements_boot_within_the_surge() -> None:
    d = booted(target=4, max_surge=1)
    for pid in d.pids(READY):
        ask(d, pid)
    step = d.tick()
    assert len(step.spawned) == 1
    retired = []
    for _ in range(4):
        assert len(d.pids(BOOTING)) == 1
        d.advance(1)
        d.ready(*d.pids(BOOTING))
        step = d.tick()
        retired += step.retired
        d.exit(*d.pids(DRAINING))
        d.tick()
    assert len(retired) == 4 and d.machine.recycles == 4
    assert d.machine.ready_count == 4 and d.pids(BOOTING) == []


def test_a_wider_surge_replaces_more_at_once() -> None:
    d = booted(target=4, max_surge=2)
    for pid in d.pids(READY):
        ask(d, pid)
    assert len(d.tick().spawned) == 2


def test_in_a_roll_an_old_worker_that_asked_is_simply_part_of_the_roll() -> None:
    d = booted(target=2)
    _, second = d.pids(READY)
    ask(d, second)
    d.reload()
    step = d.tick()
    assert len(step.spawned) == 1  # the roll's surge, not one more for the recycle
    d.ready(*step.spawned)
    step = d.tick()
    assert step.retired == [second]  # the one that asked goes first
    retire = next(a for a in step.actions if isinstance(a, Retire))
    assert retire.recycled is None and d.machine.recycles == 0
    d.settle()
    assert d.generations() == [1, 1]


def test_overdue_worker_is_retired_without_a_replacement_only_while_respawns_fail() -> None:
    d = booted(target=2)
    asker, _ = d.pids(READY)
    ask(d, asker, overdue=True)  # past twice its limit, but replacements still boot
    (replacement,) = d.tick().spawned
    assert d.tick().retired == []
    d.fail(replacement)  # the code on disk broke: the replacement cannot boot
    step = d.tick()
    assert step.retired == [asker]
    assert any(log.level == "warning" and "without a replacement" in log.message
               for log in step.logs)


def test_the_last_ready_worker_is_never_retired_without_a_replacement() -> None:
    d = booted(target=1)
    (only,) = d.pids(READY)
    ask(d, only, overdue=True)
    (replacement,) = d.tick().spawned
    d.fail(replacement)
    assert d.tick().retired == []
    assert d.machine.workers[only].state is READY


def test_a_booting_or_draining_worker_cannot_ask() -> None:
    d = booted(target=2)
    d.machine.target = 3
    (new,) = d.tick(3).spawned
    ask(d, new)
    assert d.machine.workers[new].recycle is None


def test_the_status_says_why_and_counts() -> None:
    d = booted(target=2)
    asker = d.pids(READY)[0]
    ask(d, asker, "max_worker_rss: 130 MiB resident, limit 128 MiB")
    status = d.machine.describe(lambda t: f"T+{t:g}")
    (entry,) = [w for w in status["workers"] if w["pid"] == asker]
    assert entry["recycle"] == "max_worker_rss: 130 MiB resident, limit 128 MiB"
    assert status["recycles"] == 0
