"""Hostile arguments to the command line: each refused in one line with a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from switchyard_gateway.catalog.document import MAX_DOCUMENT_BYTES, load


def switchyard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "switchyard_gateway.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})


@pytest.mark.parametrize(("args", "code", "needle"), [
    (("events", "tail", "-n", "-1"), 2, "-1 is not between 0 and"),
    (("events", "tail", "-n", "99999999999999999999"), 2, "is not between 0 and"),
    (("events", "tail", "-n", "ten"), 2, "is not a whole number"),
    (("events", "export", "--since", "999999999d"), 1, "reaches back before the year 1"),
    (("events", "export", "--since", "1d", "--until", "2d"), 1, "is not after --since"),
    (("up", "--port", "70000"), 2, "70000 is not a port from 1 to 65535"),
    (("up", "--port", "-1"), 2, "-1 is not a port"),
    (("up", "--port", "0"), 2, "0 is not a port"),        # the kernel would choose one nobody is told of
    (("up", "--host", ""), 2, "an empty address listens on every interface"),    # it did, silently
    (("up", "--host", "192.0.2.1"), 2, "cannot listen on '192.0.2.1': Cannot assign requested address"),
    (("up", "--host", "999.1.1.1"), 2, "cannot listen on '999.1.1.1'"),     # both said the port was in use
    (("up", "--config", ""), 2, "an empty path names no file"),
    (("up", "--data-dir", "a-file"), 1, "cannot be made"),
    (("up", "--data-dir", "a-file/below"), 1, "cannot be made"),
])
def test_a_hostile_argument_is_one_line_and_an_exit_code(args: tuple[str, ...], code: int, needle: str,
                                                         tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    done = switchyard(*args, cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr, done.stderr


SINGLE_KEY = "sy_single_0123456789abcdefghij"


@pytest.mark.parametrize(("env", "args", "needle"), [
    ({"SWITCHYARD_JWT_SECRET": "changeme"}, (), "SWITCHYARD_JWT_SECRET must be at least 32 bytes, not 8"),
    ({"SWITCHYARD_AUTH_MODE": "single-user", "SWITCHYARD_API_KEY": SINGLE_KEY, "SWITCHYARD_ADMIN_KEY": SINGLE_KEY},
     ("--demo",), "single-user mode (SWITCHYARD_AUTH_MODE=single-user) accepts only SWITCHYARD_API_KEY"),
    ({"SWITCHYARD_AUTH_MODE": "single_user", "SWITCHYARD_API_KEY": SINGLE_KEY}, (),
     "give SWITCHYARD_ADMIN_KEY the same value"),
    # read once the whole stack had started: a traceback, and the stack stopped again
    ({"SWITCHYARD_ADMIN_KEY_FILE": "/nonexistent/admin"}, (), "SWITCHYARD_ADMIN_KEY_FILE: cannot read /nonexistent"),
    ({"SWITCHYARD_DEMO_KEY_FILE": "/nonexistent/demo"}, ("--demo",), "SWITCHYARD_DEMO_KEY_FILE: cannot read"),
    ({"SWITCHYARD_ADMIN_KEY": SINGLE_KEY, "SWITCHYARD_ADMIN_KEY_FILE": "/etc/hostname"}, (),
     "both SWITCHYARD_ADMIN_KEY and SWITCHYARD_ADMIN_KEY_FILE are set"),
    ({"SWITCHYARD_REDIS_URL": "notaurl"}, (), "SWITCHYARD_REDIS_URL: not a redis:// or unix:// URL"),
    ({"SWITCHYARD_DATABASE_URL": "garbage"}, (), "SWITCHYARD_DATABASE_URL must be a postgresql:// URL"),
    ({"SWITCHYARD_NATS_URL": " , "}, (), "no URL in"),
    ({"SWITCHYARD_WORKERS": "two"}, (), "SWITCHYARD_WORKERS must be a whole number, not 'two'"),
])
def test_up_refuses_an_auth_set_up_it_could_never_use_before_starting_anything(
        env: dict[str, str], args: tuple[str, ...], needle: str, tmp_path: Path) -> None:
    """A weak JWT secret would let anyone who holds one token mint any other; in single-user mode the demo key, or
    an admin key other than SWITCHYARD_API_KEY, is never accepted (`up` blamed a revocation that never happened)."""
    done = subprocess.run([sys.executable, "-m", "switchyard_gateway.cli", "up", "--data-dir", str(tmp_path / "d"),
                           *args], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env})
    assert done.returncode == 1, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr and "starting NATS" not in done.stderr, \
        done.stderr


@pytest.mark.parametrize(("content", "needle"), [
    (b"providers:\n  - id: caf\xe9\n", "not UTF-8 text (byte 0xe9"),
    (b"[" * 100_000, "nested too deeply"),
    (b"{" * 50_000, "nested too deeply"),
])
def test_config_validate_refuses_what_it_cannot_read_in_one_line(content: bytes, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "switchyard.yaml"
    path.write_bytes(content)
    done = switchyard("config", "validate", str(path), cwd=tmp_path)
    assert done.returncode == 1 and needle in done.stdout + done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_document_past_the_size_bound_is_not_read(tmp_path: Path) -> None:
    """`config validate /dev/zero` grew until it was killed: a document is read only up to its bound."""
    path = tmp_path / "huge.yaml"
    with path.open("wb") as out:
        out.truncate(MAX_DOCUMENT_BYTES + 1)               # sparse: no disk written
    doc, problems = load(path)
    assert doc == {} and len(problems) == 1 and "larger than" in problems[0].message


def test_an_exported_json_document_reads_back_with_its_numbers(tmp_path: Path) -> None:
    """YAML 1.1 reads `5e-05` (no dot) as a string: an export's JSON was refused on import. JSON is read as JSON."""
    path = tmp_path / "export.json"
    path.write_text(json.dumps({"models": [{"id": "cheap", "kind": "chat", "input_price_per_1m": 0.00005}]}))
    doc, problems = load(path)
    assert problems == [] and doc["models"][0]["input_price_per_1m"] == 0.00005


def test_up_notes_the_settings_other_gateways_spell_without_our_prefix() -> None:
    """`AUTH_MODE=single_user` (the embeddings service's spelling) was silently ignored and `up` started a
    multi-tenant stack: it now says which SWITCHYARD_ variable it reads instead, unless that one is given."""
    from switchyard_gateway.cli.up import seed_spellings

    notes = seed_spellings({"AUTH_MODE": "single_user", "JWT_SECRET_KEY": "s", "REDIS_URL": "redis://x",
                            "SWITCHYARD_REDIS_URL": "redis://y", "LOG_LEVEL": "", "DATABASE_URL": "postgresql://d",
                            "SWITCHYARD_DATABASE_URL_FILE": "/run/secrets/db"})
    assert notes == [
        "note: AUTH_MODE is set, but Switchyard reads SWITCHYARD_AUTH_MODE (it takes the same values); AUTH_MODE is "
        "ignored",
        "note: JWT_SECRET_KEY is set, but Switchyard reads SWITCHYARD_JWT_SECRET (it takes the same values); "
        "JWT_SECRET_KEY is ignored"]


def test_a_data_dir_an_older_up_left_readable_is_made_its_owners_alone(tmp_path: Path) -> None:
    """A data dir made before `up` kept it private: its Valkey files and logs stay readable by every user unless
    the next start takes that away; PostgreSQL's cluster is left to PostgreSQL."""
    from switchyard_gateway.cli.up import _owner_only

    data = tmp_path / "data"
    (data / "valkey" / "appendonlydir").mkdir(parents=True)
    (data / "pg" / "data").mkdir(parents=True)
    aof, log, pg_file = data / "valkey" / "appendonlydir" / "appendonly.aof", data / "gateway.log", data / "pg" / "x"
    for path in (aof, log, pg_file):
        path.write_text("x")
        path.chmod(0o644)
    for path in (data, data / "valkey", data / "valkey" / "appendonlydir"):
        path.chmod(0o755)
    assert _owner_only(data) == []
    modes = [oct(p.stat().st_mode & 0o777) for p in (data, data / "valkey", aof, log)]
    assert modes == ["0o701", "0o700", "0o600", "0o600"]          # the data dir passable, not listable
    assert pg_file.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("given", ["site", "", "."])
def test_a_folder_of_other_things_is_refused_as_a_data_dir_untouched(tmp_path: Path, given: str) -> None:
    """`up --data-dir` on a folder of other things (a project, a home, `''` or `.` meaning the current one) took
    group and other permissions from everything in it, silently, and walked it whole: /tmp took 20 s."""
    site = tmp_path / "site"
    (site / "src").mkdir(parents=True)
    page = site / "index.html"
    page.write_text("hi")
    page.chmod(0o644)
    for folder in (site, site / "src"):
        folder.chmod(0o755)
    refused = switchyard("up", "--data-dir", given, "--port", "1", cwd=site if given != "site" else tmp_path)
    said = refused.stderr + refused.stdout
    assert refused.returncode == 1 and "holds folders of other things (src) and no Switchyard data" in said
    assert [oct(path.stat().st_mode & 0o777) for path in (site, site / "src", page)] == ["0o755", "0o755", "0o644"]
    assert sorted(path.name for path in site.iterdir()) == ["index.html", "src"]      # no stack.lock left behind


@pytest.mark.parametrize(("nodes", "said"), [
    ("2", "needs 3 nodes or more for its JetStream quorum, not 2"),
    ("99", "has at most 9 nodes (every stream is kept on 3 of them), not 99"),
])
def test_a_nats_cluster_of_a_size_it_cannot_be_is_refused_before_anything_starts(tmp_path: Path, nodes: str,
                                                                                  said: str) -> None:
    """`--nats-cluster 99` started nodes one after another (60 in 20 s on two cores) before anything said no."""
    refused = switchyard("up", "--data-dir", str(tmp_path / "data"), "--port", "1", "--nats-cluster", nodes,
                         cwd=tmp_path)
    assert refused.returncode == 1 and said in refused.stderr + refused.stdout
    assert not (tmp_path / "data" / "nats-1").exists()


def test_a_new_an_empty_or_an_earlier_data_dir_is_taken(tmp_path: Path) -> None:
    from switchyard_gateway.cli.up import _not_a_data_dir

    empty, earlier = tmp_path / "empty", tmp_path / "earlier"
    empty.mkdir()
    (earlier / "logs").mkdir(parents=True)
    (earlier / "stack.json").write_text("{}")
    assert [_not_a_data_dir(path) for path in (tmp_path / "new", empty, earlier)] == ["", "", ""]
    assert _not_a_data_dir(earlier / "logs") == ""          # empty
    for name in ("up.log", "users.yaml"):                     # files only: `up > D/up.log`, a --nats-users file
        (earlier / "logs" / name).write_text("")
    assert _not_a_data_dir(earlier / "logs") == ""
    for name in ("src", "docs", "build", "tests"):
        (earlier / "logs" / name).mkdir()
    assert _not_a_data_dir(earlier / "logs") == "build, docs, src and 1 more"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a file that belongs to another user")
def test_a_data_dir_holding_another_users_file_is_refused_untouched(tmp_path: Path) -> None:
    """`up` wrote its keys and passwords into a keys.env another user had put in the data dir (mode 0666, theirs:
    a chmod of ours could not take it back), and that user read them."""
    from switchyard_gateway.cli.up import _owner_only

    planted = tmp_path / "data" / "keys.env"
    planted.parent.mkdir()
    planted.write_text("")
    planted.chmod(0o666)
    os.chown(planted, 65534, 65534)
    assert _owner_only(planted.parent) == [planted]
    assert planted.stat().st_mode & 0o777 == 0o666
    refused = switchyard("up", "--data-dir", str(planted.parent), "--port", "1", cwd=tmp_path)
    assert refused.returncode == 1 and "belongs to another user (uid 65534)" in refused.stderr + refused.stdout
    assert planted.read_text() == ""


def test_up_prints_a_key_once_when_it_is_made_and_names_its_file_after(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every start printed the admin and demo keys, so a service manager's log of `up` held them for good."""
    from switchyard_gateway.cli import bootstrap as boot
    from switchyard_gateway.cli.up import _shown

    for name in ("SWITCHYARD_ADMIN_KEY", "SWITCHYARD_ADMIN_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    keys_file = tmp_path / "keys.env"
    first = boot.remembered_keys(keys_file, None, None)
    again = boot.remembered_keys(keys_file, None, None)
    assert again[:3] == first[:3] and first[3] and not again[3]
    assert _shown(first[0], "SWITCHYARD_ADMIN_KEY", first[3], keys_file) == first[0]       # the first start
    later = _shown(again[0], "SWITCHYARD_ADMIN_KEY", again[3], keys_file)
    assert again[0] not in later and str(keys_file) in later
    monkeypatch.setenv("SWITCHYARD_ADMIN_KEY", again[0])
    assert _shown(again[0], "SWITCHYARD_ADMIN_KEY", True, keys_file) == "from $SWITCHYARD_ADMIN_KEY"
