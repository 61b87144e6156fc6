"""An append-only file of JSON lines, one per change: what the simulator must not forget.

Appending costs what the change costs, however long the history: rewriting a snapshot of 10,000 sent
messages stalls the event loop for about 100 ms (bench/simulator_journal.py), so that happens only to
compact the file, through a temporary file renamed over it (a reader never sees half of it). A line torn
by a crash is skipped; a file of another format is set aside, not misread.
"""

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)
HEADER = {"format": 1}
Record = dict[str, Any]


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0  # records in the file, for the owner to decide when to compact
        self._pending: list[bytes] = []

    def read(self) -> list[Record]:
        """The records, oldest first."""
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        if not lines or _parse(lines[0]) != HEADER:
            aside = self.path.with_name(f"{self.path.name}.unreadable")
            self.path.replace(aside)
            log.warning(
                "sandbox state %s is not %s: starting without it, kept as %s", self.path, HEADER, aside
            )
            return []
        records = [r for r in map(_parse, lines[1:]) if isinstance(r, dict)]
        if len(records) < len(lines) - 1:
            log.warning(
                "sandbox state %s: %d unreadable lines skipped", self.path, len(lines) - 1 - len(records)
            )
        return records

    def append(self, record: Record) -> None:
        """Kept until the next `flush`."""
        self._pending.append(orjson.dumps(record) + b"\n")

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            with self.path.open("ab") as out:
                out.write(b"".join(lines))
        except OSError:
            log.exception("sandbox state not saved to %s; it is still held in memory", self.path)
            return
        self.lines += len(lines)

    def rewrite(self, records: Iterable[Record]) -> None:
        """The file becomes exactly these records (and nothing pending)."""
        self._pending = []
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")  # one per process
        lines = [orjson.dumps(HEADER)] + [orjson.dumps(r) for r in records]
        try:
            tmp.write_bytes(b"\n".join(lines) + b"\n")
            tmp.replace(self.path)
        except OSError:
            log.exception("sandbox state not saved to %s; it is still held in memory", self.path)
            return
        self.lines = len(lines) - 1


def _parse(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
