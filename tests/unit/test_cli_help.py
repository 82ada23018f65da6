"""The command's help says what each option takes and its default, and an argument it would misread or ignore is
refused in one line naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def switchyard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "switchyard_gateway.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def said(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return " ".join(text.split())


@pytest.mark.parametrize(("command", "server"), [
    (("replay",), "database"), (("events", "tail"), "database"), (("events", "export"), "database"),
    (("events", "dead-letters"), "NATS"),
])
def test_each_data_dir_option_says_whose_stack_it_reads_and_its_default(command: tuple[str, ...], server: str,
                                                                        tmp_path: Path) -> None:
    done = switchyard(*command, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"--data-dir DATA_DIR the data directory of the `switchyard up` whose {server} to use" in said(done.stdout)
    assert "(default: ./.switchyard, as up's)" in said(done.stdout)


def test_the_events_summary_names_every_subcommand(tmp_path: Path) -> None:
    line = said(switchyard("--help", cwd=tmp_path).stdout).split(" events ", 1)[1]
    assert line.startswith("read the event log (follow it, export it as JSON lines), print the published contracts' "
                           "schemas, list or retry dead letters")


@pytest.mark.parametrize("since", [("--since", "-5m"), ("--since=-5m",), ("--since", "-0.5h")])
def test_an_age_written_with_a_minus_is_read_as_that_age_ago(since: tuple[str, ...], tmp_path: Path) -> None:
    """`--since -5m` was argparse's "expected one argument"; an --until before it shows the time was read."""
    done = switchyard("events", "export", *since, "--until", "-1d", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1 and "is not after --since" in done.stderr, done.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (("events", "schema", "usage.recorded.v2", "--asyncapi"), "--asyncapi covers every contract, not "
                                                              "'usage.recorded.v2' alone"),
    (("events", "schema", "usage.recorded.v2", "--write", "out"), "--write covers every contract"),
    (("events", "schema", "--asyncapi", "--write", "out"), "give --asyncapi or --write, not both"),
])
def test_events_schema_refuses_a_name_it_would_ignore(args: tuple[str, ...], needle: str, tmp_path: Path) -> None:
    done = switchyard(*args, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == "" and needle in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("out", "needle"), [
    ("a-file/nats_config", "cannot write a-file/nats_config: a-file is not a directory"),
    ("a-file/below/nats_config", "cannot write a-file/below/nats_config: a-file is not a directory"),
])
def test_nats_config_out_below_a_file_names_the_file(out: str, needle: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "password").write_text("x" * 24)
    done = switchyard("nats-config", "--password-file", "password", "--out", out, cwd=tmp_path)
    assert done.returncode == 1 and needle in done.stderr, done.stderr


def test_nats_config_out_replaces_a_link_or_a_readable_file_and_never_writes_through_it(tmp_path: Path) -> None:
    """`--out` through a link planted in its place truncated the file it named, made it 0600 and wrote the services'
    password into it; a file already there, readable by all, kept its mode (and whoever had it open, the text)."""
    (tmp_path / "password").write_text("x" * 24)
    target, readable = tmp_path / "target", tmp_path / "readable.conf"
    target.write_text("someone else's file")
    target.chmod(0o644)
    readable.write_text("")
    readable.chmod(0o666)
    (tmp_path / "link.conf").symlink_to(target)
    for out in ("link.conf", "readable.conf"):
        done = switchyard("nats-config", "--password-file", "password", "--out", out, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        written = tmp_path / out
        assert not written.is_symlink() and written.stat().st_mode & 0o777 == 0o600
        assert "x" * 24 in written.read_text()
    assert target.read_text() == "someone else's file" and target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.conf", "password", "readable.conf", "target"]


def test_nats_config_names_the_route_whose_port_is_out_of_range(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("x" * 24)
    done = switchyard("nats-config", "--password-file", "password", "--routes", "nats-1:6222,nats-2:99999",
                      cwd=tmp_path)
    assert done.returncode == 1 and "--routes: 'nats://nats-2:99999' has a port outside 0-65535" in done.stderr, \
        done.stderr


def test_config_validate_refuses_an_empty_path_and_names_a_file_once(tmp_path: Path) -> None:
    done = switchyard("config", "validate", "", cwd=tmp_path)
    assert done.returncode == 2 and "argument file: an empty path names no file" in done.stderr, done.stderr
    (tmp_path / "folder").mkdir()
    done = switchyard("config", "validate", "folder", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == "folder: cannot read: it is a directory, not a regular file\n", done.stdout
    (tmp_path / "bad.yaml").write_text("providers: [{id: x, kind: ollama}]\n")
    done = switchyard("config", "validate", "bad.yaml", cwd=tmp_path)
    assert done.stdout.startswith("bad.yaml: providers[0].id: 'x' is not a valid identifier"), done.stdout
