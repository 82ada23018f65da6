"""The circuit breaker as a pure state machine, and the board that feeds it outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from switchyard_gateway.contracts.events import CallAttempted
from switchyard_gateway.contracts.routing import ProbeCompleted
from switchyard_gateway.services.router.board import Board
from switchyard_gateway.services.router.breaker import Breaker
from switchyard_gateway.services.router.policy import RouterPolicy

T0 = datetime(2025, 1, 1, tzinfo=UTC)
POLICY = RouterPolicy(breaker_failures=3, breaker_error_ratio=0.5, breaker_window_s=10, breaker_min_calls=6,
                      breaker_cool_down_s=2, breaker_max_cool_down_s=5, breaker_successes=2, breaker_trial_calls=1,
                      breaker_probe_cool_down_s=0.8)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def breaker() -> Breaker:
    return Breaker("ep-1", POLICY, router="r1")


def test_opens_after_consecutive_failures(breaker: Breaker) -> None:
    assert breaker.record(True, at(0)) is None
    assert breaker.record(True, at(0.1)) is None
    change = breaker.record(True, at(0.2))
    assert change is not None and (change.previous, change.state, change.reason) == ("closed", "open",
                                                                                      "consecutive_failures")
    assert change.failures == 3 and change.retry_at == at(2.2) and change.trial_calls == 1 and change.router == "r1"


def test_a_success_in_between_resets_the_consecutive_count(breaker: Breaker) -> None:
    for failed in (True, True, False, True, True):
        assert breaker.record(failed, at(0)) is None
    assert breaker.state == "closed"


def test_opens_on_error_ratio_over_the_window_without_a_run_of_failures(breaker: Breaker) -> None:
    changes = [breaker.record(failed, at(i * 0.1)) for i, failed in enumerate([True, False] * 3)]
    assert changes[:-1] == [None] * 5
    assert changes[-1] is None, "3 of 6 failed but the last call succeeded"
    change = breaker.record(True, at(0.7))
    assert change is not None and change.reason == "error_ratio" and change.calls == 7


def test_old_calls_leave_the_window(breaker: Breaker) -> None:
    for i, failed in enumerate([True, False] * 3):
        breaker.record(failed, at(i * 0.1))
    assert breaker.record(True, at(20)) is None, "the earlier calls are past the 10 s window"
    assert breaker.counts() == (1, 1)


def test_half_open_after_cool_down_then_closed_after_successes(breaker: Breaker) -> None:
    for i in range(3):
        breaker.record(True, at(i))
    assert breaker.tick(at(3.9)) is None
    change = breaker.tick(at(4.0))
    assert change is not None and (change.previous, change.state, change.reason) == ("open", "half_open", "cool_down")
    assert breaker.record(False, at(4.1)) is None
    closed = breaker.record(False, at(4.2))
    assert closed is not None and (closed.state, closed.reason) == ("closed", "trials_succeeded")
    assert breaker.consecutive == 0 and breaker.counts() == (0, 0)


def test_a_failed_trial_reopens_with_a_doubled_cool_down_up_to_the_cap(breaker: Breaker) -> None:
    for i in range(3):
        breaker.record(True, at(0))
    cool_downs = []
    now = 0.0
    for _ in range(3):
        breaker.tick(at(now + 100))
        now += 100
        change = breaker.record(True, at(now))
        assert change is not None and (change.previous, change.state, change.reason) == ("half_open", "open",
                                                                                          "trial_failed")
        cool_downs.append((change.retry_at - at(now)).total_seconds())
    assert cool_downs == [4.0, 5.0, 5.0]


def test_results_while_open_change_nothing(breaker: Breaker) -> None:
    for i in range(3):
        breaker.record(True, at(0))
    assert breaker.record(False, at(0.5)) is None and breaker.record(True, at(0.6)) is None
    assert breaker.state == "open"


def test_reset_closes_and_forgets(breaker: Breaker) -> None:
    for i in range(3):
        breaker.record(True, at(0))
    change = breaker.reset(at(1))
    assert (change.previous, change.state, change.reason) == ("open", "closed", "reset")
    assert breaker.record(True, at(1.1)) is None and breaker.consecutive == 1


def test_board_counts_4xx_as_an_answer_and_ignores_unknown_endpoints() -> None:
    board = Board(POLICY, "r1")
    attempts = [CallAttempted(request_id=str(i), endpoint_id="ep-1", model="m", outcome="http_4xx") for i in range(5)]
    attempts += [CallAttempted(request_id="x", endpoint_id="ghost", model="m", outcome="refused")] * 5
    assert board.fold_outcomes(attempts, {"ep-1"}, at(0)) == []
    assert "ghost" not in board.breakers
    refused = [CallAttempted(request_id=str(i), endpoint_id="ep-1", model="m", outcome="refused") for i in range(3)]
    changes = board.fold_outcomes(refused, {"ep-1"}, at(1))
    assert [(c.endpoint_id, c.state) for c in changes] == [("ep-1", "open")]


def test_board_folds_probes_and_resumes_published_state() -> None:
    board = Board(POLICY, "r1")
    for i in range(3):
        change = board.fold_probe(ProbeCompleted(endpoint_id="ep-1", ok=False, error="refused"), at(i))
    assert change is not None and change.state == "open"
    successor = Board(POLICY, "r2")
    successor.resume({"ep-1": change})
    assert successor.breakers["ep-1"].state == "open"
    assert [c.state for c in successor.tick(at(100))] == ["half_open"]
    assert [v.state for v in successor.views(["ep-1", "ep-2"])] == ["half_open", "closed"]


def test_a_probe_success_while_closed_does_not_wipe_out_failed_calls(breaker: Breaker) -> None:
    breaker.record(True, at(0))
    breaker.record(True, at(0.1))
    assert breaker.probe(True, at(0.2)) is None
    change = breaker.record(True, at(0.3))
    assert change is not None and change.state == "open", "calls hung while the model list answered"


def test_after_a_failed_probe_a_successful_one_ends_the_cool_down_at_once(breaker: Breaker) -> None:
    for i in range(3):
        breaker.record(True, at(0))
    assert breaker.probe(False, at(0.5)) is None                 # still down
    change = breaker.probe(True, at(1.0))                        # back: half-open long before retry_at (2.0)
    assert change is not None and (change.previous, change.state, change.reason) == \
        ("open", "half_open", "probe_succeeded")
    assert breaker.probe(True, at(1.1)) is None
    closed = breaker.probe(True, at(1.2))
    assert closed is not None and closed.state == "closed"


def test_after_refused_connections_a_successful_probe_ends_the_cool_down_at_once(breaker: Breaker) -> None:
    for i in range(3):
        breaker.record(True, at(0), unreachable=True)
    change = breaker.probe(True, at(0.5))
    assert change is not None and change.state == "half_open" and change.reason == "probe_succeeded"


def test_while_calls_fail_and_probes_answer_a_probe_lets_trials_through_but_only_calls_close_it(
        breaker: Breaker) -> None:
    for i in range(3):
        breaker.record(True, at(0))
    assert breaker.probe(True, at(0.5)) is None                  # open less than breaker_probe_cool_down_s
    change = breaker.probe(True, at(1.0))                        # trials now, not at retry_at (2.0)
    assert change is not None and change.state == "half_open" and change.reason == "probe_succeeded"
    for i in range(5):
        assert breaker.probe(True, at(1.1 + i / 10)) is None and breaker.state == "half_open"
    reopened = breaker.record(True, at(1.7))                     # a trial call still hangs or fails
    assert reopened is not None and reopened.state == "open"
    assert breaker.probe(True, at(1.8)) is None and breaker.state == "open"
    assert breaker.probe(True, at(2.6)) is not None and breaker.state == "half_open"
    breaker.record(False, at(2.7))
    closed = breaker.record(False, at(2.8))                      # two trial calls served: it works again
    assert closed is not None and closed.state == "closed"
