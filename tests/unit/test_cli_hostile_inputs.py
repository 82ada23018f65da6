"""The `switchyard` command against what it is handed: junk on DEADLETTER, letters that would drive the terminal,
files that never end or never open, servers that are not there. Each ends in one line and an exit code."""

from __future__ import annotations

import io
import json
import os
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from switchyard_gateway.cli import deadletters, main
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.deadletters import EventDeadLettered, EventRetryRequested
from switchyard_gateway.contracts.events import subject_of
from switchyard_gateway.kit import nats_auth

PASSWORD = "0123456789abcdef0123456789"
HOSTILE = "boom \x1b[2J\x1b[31mSCREEN CLEARED\x1b[0m\nFAKE LINE: all good"


def letter(consumer: str = "spend", error: str = "boom") -> EventDeadLettered:
    return EventDeadLettered(event_id=uuid.uuid4(), occurred_at=datetime(2026, 5, 1, tzinfo=timezone.utc),
                             consumer=consumer, stage="apply", error=error, source="log", sequence=7)


def finished(call, timeout_s: float = 10.0):
    """Run `call` on a thread; fail (rather than hang the run) when it does not return within the deadline."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except Exception as exc:  # noqa: BLE001 — raised again on the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert outcome, f"still running after {timeout_s} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# 1. entries on DEADLETTER that are not dead letters

def test_junk_on_deadletter_is_skipped_and_counted_and_the_letters_still_listed() -> None:
    good = letter()
    retry = EventRetryRequested(event_id=uuid.uuid4(), occurred_at=good.occurred_at, consumer="spend",
                                dead_letter=3, source="log", sequence=7)
    entries = [
        (2, f"{subjects.EVENT_DEAD_LETTERED}.spend", b"\x00 not json"),
        (3, subject_of(good), encode(good)),
        (4, f"{subjects.EVENT_DEAD_LETTERED}.spend", b'{"type":"io.nats.jetstream.api.v1.consumer_create_response"}'),
        (5, f"{subjects.EVENT_RETRY_REQUESTED}.spend", b"[1, 2]"),
        (6, subject_of(retry), encode(retry)),
    ]
    skipped: list[int] = []
    found = deadletters.collect(entries, "spend", skipped)
    assert [(one.id, one.retries) for one in found] == [(3, [6])]
    assert skipped == [2, 4, 5]
    assert deadletters.skipped_line(skipped) == \
        f"3 entries on {subjects.STREAM_DEADLETTER} are not dead letters (sequence 2, 4, 5): skipped"


# 2. a letter's text fields printed as they are

def test_the_table_escapes_control_characters_and_cuts_long_fields() -> None:
    hostile = deadletters.Letter(3, letter(consumer="sp\x1bend", error=HOSTILE))
    huge = deadletters.Letter(4, letter(error="x" * 500_000))
    out = io.StringIO()
    deadletters.show([hostile, huge], as_json=False, out=out)
    text = out.getvalue()
    assert "\x1b" not in text and len(text.splitlines()) == 3
    assert r"boom \x1b[2J\x1b[31mSCREEN CLEARED\x1b[0m\nFAKE LINE: all good" in text
    assert len(text) < 2000 and "… (500,000 characters)" in text


def test_json_output_keeps_every_field_whole_and_exact() -> None:
    out = io.StringIO()
    deadletters.show([deadletters.Letter(3, letter(error=HOSTILE + "y" * 10_000))], as_json=True, out=out)
    assert "\x1b" not in out.getvalue() and json.loads(out.getvalue())["error"] == HOSTILE + "y" * 10_000


# 3. files that are not files, or never end

def test_a_users_file_that_is_a_fifo_or_too_large_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "users.fifo"
    os.mkfifo(fifo)
    with pytest.raises(nats_auth.UsersError, match="a FIFO, not a regular file"):
        finished(lambda: nats_auth.load(fifo, {}))
    large = tmp_path / "users.yaml"
    with large.open("wb") as file:
        file.truncate(2 * nats_auth.MAX_USERS_BYTES)       # sparse: costs no disk
    with pytest.raises(nats_auth.UsersError, match="larger than 1 MiB"):
        nats_auth.load(large, {})
    with pytest.raises(nats_auth.UsersError, match="a character device, not a regular file"):
        nats_auth.load(Path("/dev/zero"), {})


@pytest.mark.parametrize("content, message", [
    (None, "a FIFO, not a regular file"),
    (b"x" * 5000, "larger than 4 KiB"),
    (b"\xff\xfe" + b"\x84" * 30, "not UTF-8 text"),
], ids=["fifo", "5000-bytes", "binary"])
def test_a_password_file_that_cannot_be_a_password_is_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str) -> None:
    path = tmp_path / "pw"
    if content is None:
        os.mkfifo(path)
    else:
        path.write_bytes(content)
    assert finished(lambda: main(["nats-config", "--password-file", str(path)])) == 1
    err = capsys.readouterr().err
    assert message in err and "codec" not in err and len(err.splitlines()) == 1, err


def test_a_users_file_of_nats_config_is_read_within_bounds(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    fifo = tmp_path / "users"
    os.mkfifo(fifo)
    assert finished(lambda: main(["nats-config", "--password-file", str(tmp_path / "pw"), "--users", str(fifo)])) == 1
    assert "a FIFO, not a regular file" in capsys.readouterr().err
    assert main(["nats-config", "--password-file", str(tmp_path / "pw"), "--users", "/dev/zero"]) == 1
    assert "a character device, not a regular file" in capsys.readouterr().err


def test_config_validate_refuses_a_fifo_instead_of_waiting_for_a_writer(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "switchyard.yaml"
    os.mkfifo(fifo)
    assert finished(lambda: main(["config", "validate", str(fifo)])) == 1
    assert "a FIFO, not a regular file" in capsys.readouterr().out


# 4. what fails outside: one line, not a traceback

@pytest.mark.parametrize("target", ["file", "/proc/1", "/dev/null"])
def test_events_schema_write_where_it_cannot_says_so_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str) -> None:
    if target == "file":
        target = str(tmp_path / "a-file")
        Path(target).write_text("")
    assert main(["events", "schema", "--write", target]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"switchyard: events schema: {target}/") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("url, shown", [
    ("garbage", "PostgreSQL (SWITCHYARD_DATABASE_URL): invalid DSN"),
    ("postgresql://me:s3cret-pw@127.0.0.1:1/x", "PostgreSQL at postgresql://me:***@127.0.0.1:1/x: "),
])
def test_events_tail_against_a_database_it_cannot_reach_says_where_in_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, shown: str) -> None:
    monkeypatch.setenv("SWITCHYARD_DATABASE_URL", url)
    assert main(["events", "tail", "--no-follow"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"switchyard: events tail: {shown}") and "s3cret" not in err, err
    assert len(err.splitlines()) == 1, err


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from switchyard_gateway.cli import events

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(events, "run", broken)
    with pytest.raises(KeyError):
        main(["events", "schema"])


# 5. the projections named

def test_replay_of_an_unknown_projection_names_the_ones_list_names(capsys: pytest.CaptureFixture[str]) -> None:
    from switchyard_gateway.services.metering.projections import PROJECTIONS

    assert main(["replay", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown projection nosuch" in err and all(name in err for name in [*PROJECTIONS, "quota"]), err


def test_a_server_error_that_names_where_is_told_as_it_is_and_a_password_in_it_masked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from switchyard_gateway.cli import failures

    monkeypatch.setenv("SWITCHYARD_REDIS_URL", "redis://:v4lkey-pw@127.0.0.1:1")
    said = failures.described(ConnectionError("Valkey at 127.0.0.1:1 is unreachable: v4lkey-pw refused"), None)
    assert said == "Valkey at 127.0.0.1:1 is unreachable: *** refused"
