"""`switchyard config validate`: every problem of a registry document, with its path."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path
from typing import Any

from switchyard_gateway.cli.say import say


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    config = sub.add_parser("config", help="check a switchyard.yaml registry document")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    validate = config_sub.add_parser(
        "validate", help="report every problem of a config file with its path; exit 1 if there is any",
        description="Check a registry document without starting anything: YAML syntax, unknown keys, types, "
                    "identifiers, URL schemes and port ranges, credentials given only as ${ENV_VAR}, dangling "
                    "references (endpoint -> provider, assignment -> model, fallbacks) and duplicate identifiers.")
    validate.add_argument("file", type=named_file, help="the file to check, e.g. switchyard.yaml")


def named_file(text: str) -> Path:
    """A path that names a file (an argparse type): an empty one would be read as the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path names no file")
    return Path(text)


def _said(path: Path, problem: Any) -> str:
    """A problem as one line: its place in the document after the file's name, unless the place is the file itself."""
    where = "" if problem.path == str(path) else f"{problem.path}: "
    return f"{path}: {where}{problem.message}"


def validate(path: Path) -> int:
    """Print every problem of a config file with its path; 0 when there is none."""
    doc, problems = _checked(path)
    for problem in problems:
        print(_said(path, problem), flush=True)
    if problems:
        say(f"{path}: {len(problems)} problem(s)")
        return 1
    counts = ", ".join(f"{len(doc.get(k) or [])} {k}" for k in ("providers", "endpoints", "models", "tenants"))
    print(f"{path}: OK ({counts})", flush=True)
    return 0


def load(path: Path) -> dict | None:
    doc, problems = _checked(path)
    for problem in problems:
        say(_said(path, problem))
    if problems:
        say(f"{path}: {len(problems)} problem(s); nothing started")
    return doc


def _checked(path: Path) -> tuple[dict | None, list]:
    """document.checked, but a path that is not a regular file is refused unopened: a FIFO would wait for a
    writer for ever."""
    from switchyard_gateway.catalog import document

    try:
        mode = path.stat().st_mode
    except OSError:
        mode = stat.S_IFREG                 # missing or unreadable: load says which
    if not stat.S_ISREG(mode):
        kind = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(mode), "not a file")
        return None, [document.Problem(str(path), f"cannot read: it is {kind}, not a regular file")]
    return document.checked(path)


def run(args: argparse.Namespace) -> int:
    return validate(args.file)
