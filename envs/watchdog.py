"""A guard process for an engine we do not spawn ourselves: ViZDoom's `vizdoom` child process.

ViZDoom starts its engine as a child of the Python process and talks to it over message
queues. Two failures leave it stuck: an engine call that never returns (the controller waits
forever, holding the GIL, so no Python thread can interrupt it), and a Python process that dies
by SIGKILL (the engine waits forever for its next message, an orphan). ViZDoom offers no
timeout or parent-death option for either, and PR_SET_PDEATHSIG can only be set by the child
itself. So each engine gets a small guard process of ours that kills it when

- a deadline armed around an engine call passes (the blocked call then raises, because the
  controller learns that its engine exited), or
- its stdin pipe from us reaches EOF without a "quit": the kernel closes that pipe however
  Python ends, SIGKILL included.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

# The guard: stdin lines "arm SECONDS", "disarm", "quit". It kills the engine only while the
# engine's command line still carries its instance tag, so a recycled pid is never hit.
_GUARD = r"""
import os, select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to Python, which closes us itself
pid, tag = int(sys.argv[1]), sys.argv[2].encode()
def kill():
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if tag in f.read():
                os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
deadline, buf = None, b""
while True:
    wait = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not select.select([0], [], [], wait)[0]:
        kill()
        deadline = None
        continue
    data = os.read(0, 4096)
    if not data:
        kill()
        break
    buf += data
    *lines, buf = buf.split(b"\n")
    for line in lines:
        cmd = line.split()
        if cmd[:1] == [b"arm"]:
            deadline = time.monotonic() + float(cmd[1])
        elif cmd[:1] == [b"disarm"]:
            deadline = None
        elif cmd[:1] == [b"quit"]:
            sys.exit(0)
"""


def child_pids(name: str) -> set[int]:
    """Pids of this process's live children whose executable is named `name` (zombies excluded)."""
    me, out = os.getpid(), set()
    if not os.path.isdir("/proc"):  # no procfs (macOS): the engine runs unguarded
        return out
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ')'.
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if int(ppid) == me and comm == name and state != "Z":
            out.add(int(entry))
    return out


def instance_tag(pid: int) -> str:
    """The engine's `+viz_instance_id` value (unique per engine), read from its command line."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        args = f.read().split(b"\0")
    try:
        return args[args.index(b"+viz_instance_id") + 1].decode()
    except (ValueError, IndexError):
        return os.path.basename(args[0].decode())


class EngineGuard:
    """Kills engine process `pid` when an armed deadline passes or when this Python process dies."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.expired = False
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _GUARD, str(pid), instance_tag(pid)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the terminal's process group must not kill the guard first
        )
        self._deadline: float | None = None

    def _send(self, line: str) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(BrokenPipeError):  # the guard died between poll and write
                self._proc.stdin.write(f"{line}\n".encode())
                self._proc.stdin.flush()

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Kill the engine if the body has not finished within `seconds`; `expired` says whether it did."""
        self.expired = False
        start = time.monotonic()
        self._send(f"arm {seconds}")
        try:
            yield
        finally:
            self.expired = time.monotonic() - start >= seconds
            self._send("disarm")

    def close(self) -> None:
        """Stop the guard without touching the engine (the engine was closed normally)."""
        with contextlib.suppress(OSError, ValueError):
            self._send("quit")
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
