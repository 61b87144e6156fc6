"""Processes as Linux's /proc shows them: who descends from whom, and who is still running."""

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    pid: int
    started: int  # clock ticks after boot: a pid reused by another process does not match
    args: str

    def running(self) -> bool:
        """Alive and not a zombie (an orphan's zombie waits for an init that may never reap it)."""
        stat = _stat(self.pid)
        return stat is not None and stat[1] == self.started and stat[2] != "Z"


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time, state), None if there is no such process."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), int(fields[19]), fields[0]


def _args(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _all() -> dict[int, tuple[int, int, str]]:
    found = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            found[int(entry.name)] = stat
    return found


def descendants(pid: int) -> list[Process]:
    """Every running process below `pid`: children, their children, …"""
    table = _all()
    below, frontier = [], {pid}
    while frontier:
        children = {p for p, (ppid, _, state) in table.items() if ppid in frontier and state != "Z"}
        below += [Process(p, table[p][1], _args(p)) for p in children]
        frontier = children
    return below


def marked(mark: bytes) -> list[Process]:
    """Running processes (this one aside) whose environment holds `mark` (e.g. b"NAME=value")."""
    found = []
    for pid, (_, started, state) in _all().items():
        if pid == os.getpid() or state == "Z":
            continue
        try:
            environ = (PROC / str(pid) / "environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if mark in environ:
            found.append(Process(pid, started, _args(pid)))
    return found


def still_running(processes: list[Process], within: float) -> list[Process]:
    """Those still running after waiting up to `within` seconds for all of them to end."""
    deadline = time.monotonic() + within
    while (left := [p for p in processes if p.running()]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left
