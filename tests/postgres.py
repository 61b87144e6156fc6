"""A PostgreSQL server of a test's own (the embedded package's binaries, a temporary folder, a free port),
for the tests that stop and restart it: never the server the rest of the suite shares."""

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port

# PostgreSQL refuses to run as root; the embedded package runs it as this user then (db.embedded_url).
USER = "pgserver" if os.geteuid() == 0 else None


class OwnPostgres:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "pg"
        self.port = free_port()

    @property
    def url(self) -> str:
        """Its `postgres` database, as asyncpg takes it."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._ctl("-w", "-t", "30", "-l", str(self.folder / "server.log"), "-o", options, "start")

    def stop(self) -> None:
        """Fast: every session is ended at once, as in a restart or a failover."""
        self._ctl("-w", "-t", "30", "-m", "fast", "stop")

    def _ctl(self, *args: str) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        subprocess.run(
            [POSTGRES_BIN_PATH / "pg_ctl", "-D", self.data, *args],
            user=USER,
            capture_output=True,
            timeout=60,
            check=True,
        )


@contextlib.contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    """initdb, started; stopped and removed afterwards."""
    from pgserver._commands import POSTGRES_BIN_PATH

    folder = Path(tempfile.mkdtemp(prefix="wg-own-pg-"))  # under /tmp: the pytest folders are root's only
    if USER:
        shutil.chown(folder, USER, USER)
    server = OwnPostgres(folder)
    try:
        subprocess.run(
            [POSTGRES_BIN_PATH / "initdb", "-D", server.data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            user=USER,
            capture_output=True,
            timeout=120,
            check=True,
        )
        server.start()
        try:
            yield server
        finally:
            if (server.data / "postmaster.pid").exists():
                server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
