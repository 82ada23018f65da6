"""The supervisor with real processes: restarts after the whole group is gone, backoff, stops by tier."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from switchyard_gateway.kit.stack_proc import group_members, wait_until
from switchyard_gateway.kit.supervisor import INFRASTRUCTURE, SERVICES, Command, State, Supervisor

# A unit that forks a helper ignoring SIGTERM (like a worker that will not finish), then waits.
STUBBORN = """
import os, signal, sys, time
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(sys.argv[1], "a").write(f"helper {os.getpid()}\\n")
time.sleep(600)
"""

# A unit that writes "<name> <time>" when asked to stop, then exits.
POLITE = """
import signal, sys, time
def stop(*_):
    time.sleep(0.2)
    open(sys.argv[1], "a").write(f"{sys.argv[2]} {time.monotonic()}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
time.sleep(600)
"""


def _unit(tmp_path: Path, name: str, script: str, *args: str, tier: int = SERVICES) -> Command:
    return Command(name, [sys.executable, "-c", script, *args], {}, tmp_path / f"{name}.log", tier=tier)


def _poll_until(supervisor: Supervisor, condition, timeout_s: float) -> bool:
    def polled() -> bool:
        supervisor.poll()
        return condition()
    return wait_until(polled, timeout_s=timeout_s, interval_s=0.05)


def test_a_unit_is_restarted_only_after_what_is_left_of_its_group_is_gone(tmp_path: Path) -> None:
    notes = tmp_path / "helpers"
    supervisor = Supervisor(echo=False, group_grace_s=0.5)
    watch = supervisor.add(_unit(tmp_path, "stubborn", STUBBORN, str(notes)))
    try:
        assert wait_until(lambda: notes.exists() and notes.read_text().count("helper") == 1, timeout_s=10)
        first = watch.proc
        assert first is not None
        helper = int(notes.read_text().split()[1])
        first.send_signal(signal.SIGKILL)
        # Until the helper (which ignores SIGTERM) is killed, no second copy starts.
        assert _poll_until(supervisor, lambda: watch.state is not State.RUNNING, timeout_s=5)
        while psutil.pid_exists(helper) and psutil.Process(helper).status() != psutil.STATUS_ZOMBIE:
            supervisor.poll()
            assert watch.proc is first, "a second copy started while the first one's helper was alive"
            time.sleep(0.02)
        assert _poll_until(supervisor, lambda: watch.state is State.RUNNING and watch.proc is not first, timeout_s=5)
        assert watch.history == [-signal.SIGKILL] and watch.restarts == 1
        assert group_members(first.pid) == []
    finally:
        supervisor.stop(timeout_s=2)


def test_a_unit_that_keeps_failing_backs_off(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    script = "import sys, time; open(sys.argv[1], 'a').write(f'{time.monotonic()}\\n'); sys.exit(3)"
    supervisor = Supervisor(echo=False)
    watch = supervisor.add(_unit(tmp_path, "failing", script, str(starts)))
    try:
        assert _poll_until(supervisor, lambda: len(watch.history) >= 3, timeout_s=15)
        assert watch.history[:3] == [3, 3, 3] and watch.restarts >= 2
        first, second, third = (float(line) for line in starts.read_text().split()[:3])
        assert second - first >= 0.5 and third - second >= 1.0       # 0.5 s, then 1 s, then 2 s ...
    finally:
        supervisor.stop(timeout_s=2)


def test_stop_takes_the_highest_tier_first_and_each_tier_at_once(tmp_path: Path) -> None:
    notes = tmp_path / "stops"
    supervisor = Supervisor(echo=False)
    for name, tier in (("db", INFRASTRUCTURE), ("api-1", SERVICES), ("api-2", SERVICES)):
        supervisor.add(_unit(tmp_path, name, POLITE, str(notes), name, tier=tier))
    time.sleep(0.5)                      # let the children install their handlers
    started = time.monotonic()
    supervisor.stop(timeout_s=5)
    took = time.monotonic() - started
    stops = dict(line.split() for line in notes.read_text().splitlines())
    assert set(stops) == {"db", "api-1", "api-2"}
    assert float(stops["db"]) > max(float(stops["api-1"]), float(stops["api-2"]))
    assert took < 0.2 * 3 + 1.0, f"the services were stopped one after the other ({took:.2f} s)"
    assert all(w.state is State.STOPPED for w in supervisor.watches.values())


# A unit that forks a helper whose main thread exits while another thread lingers (as a multi-threaded worker
# looks while it dies: its main thread a zombie, its other threads still exiting), then waits.
LINGERING = """
import ctypes, os, signal, sys, threading, time
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    def linger():
        time.sleep(float(sys.argv[2]))
        os._exit(0)
    threading.Thread(target=linger).start()
    open(sys.argv[1], "a").write(f"helper {os.getpid()}\\n")
    ctypes.CDLL(None).pthread_exit(None)
time.sleep(600)
"""

# Run as its own process: a subreaper adopts every orphan below it, which pytest must not become.
ADOPTING = """
import json, signal, sys, time
from pathlib import Path
from switchyard_gateway.kit.stack_proc import become_subreaper, wait_until
from switchyard_gateway.kit.supervisor import Command, State, Supervisor

become_subreaper()
notes = Path(sys.argv[1])
supervisor = Supervisor(echo=False, group_grace_s=10)
unit = Command("lingering", [sys.executable, "-c", sys.argv[2], str(notes), "1.5"], {}, notes.with_suffix(".log"))
watch = supervisor.add(unit)
assert wait_until(lambda: notes.exists() and "helper" in notes.read_text(), timeout_s=10)
helper = int(notes.read_text().split()[1])
first = watch.proc
first.send_signal(signal.SIGKILL)
killed = time.monotonic()
restarted_while_helper_ran = False

def helper_state():
    try:
        return Path(f"/proc/{helper}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None

def polled():
    global restarted_while_helper_ran
    supervisor.poll()
    if watch.proc is not first and Path(f"/proc/{helper}/task").exists() and len(list(Path(f"/proc/{helper}/task").iterdir())) > 1:
        restarted_while_helper_ran = True
    return watch.proc is not first and watch.state is State.RUNNING and helper_state() is None

done = wait_until(polled, timeout_s=10, interval_s=0.05)
print(json.dumps({"restarted_and_reaped": done, "helper_state": helper_state(),
                  "restarted_while_helper_ran": restarted_while_helper_ran,
                  "after_s": round(time.monotonic() - killed, 2)}))
supervisor.stop(timeout_s=2)
"""


def test_a_helper_whose_threads_are_still_exiting_holds_the_restart_and_is_reaped(tmp_path: Path) -> None:
    """Killed with its main, a worker's main thread shows as a zombie while its other threads finish: until
    they have, it is still part of its group (no second copy starts beside it), and then it is reaped."""
    run = subprocess.run([sys.executable, "-c", ADOPTING, str(tmp_path / "helpers"), LINGERING],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["restarted_and_reaped"], seen            # not left a zombie nobody reaps
    assert not seen["restarted_while_helper_ran"], seen   # no second copy while the first one's helper ran
    assert seen["after_s"] >= 1.4, seen                   # the helper's thread lingered 1.5 s
