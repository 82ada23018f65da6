"""The in-flight counters the gateway's workers share: a cap holds across workers, and a new worker starts at zero."""

from __future__ import annotations

from pathlib import Path

from switchyard_gateway.services.gateway.pipeline.shared_inflight import SharedInflight


def test_a_cap_counts_the_calls_of_every_worker(tmp_path: Path) -> None:
    one, two = (SharedInflight(tmp_path / "gw.inflight", worker, 2) for worker in (1, 2))
    assert one.take("e1", "m", 3) and two.take("e1", "m", 3)
    two.add("e1", "m")                                   # an uncapped count is seen by the cap too
    assert not one.take("e1", "m", 3) and not two.take("e1", "m", 3)
    assert one.count("e1", "m") == two.count("e1", "m") == 3
    assert one.take("e2", "m", 1) and not two.take("e2", "m", 1), "another endpoint has its own count"
    two.give("e1", "m")
    assert one.take("e1", "m", 3)
    assert two.count("e1", "m") == 3


def test_a_worker_that_takes_over_a_slot_forgets_what_its_predecessor_counted(tmp_path: Path) -> None:
    path = tmp_path / "gw.inflight"
    one, two = SharedInflight(path, 1, 2), SharedInflight(path, 2, 2)
    assert two.take("e", "m", 2) and two.take("e", "m", 2)
    assert not one.take("e", "m", 2)
    two.close()                                          # the worker died with two calls counted
    SharedInflight(path, 2, 2)                           # its successor in slot 2
    assert one.count("e", "m") == 0 and one.take("e", "m", 2)
