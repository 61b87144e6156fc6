"""`window-gate serve` and the processes it starts end together, however it is stopped."""

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import cli_env, free_port
from tests.processes import descendants, still_running
from tests.served import serve

pytestmark = pytest.mark.slow  # `serve` as a process, stopped by signals


@pytest.mark.parametrize(
    ("signum", "workers"),
    [
        (signal.SIGTERM, 1),
        (signal.SIGINT, 1),
        (signal.SIGKILL, 1),
        (signal.SIGTERM, 2),
        (signal.SIGKILL, 2),
    ],
    ids=["SIGTERM", "SIGINT", "SIGKILL", "SIGTERM-2-workers", "SIGKILL-2-workers"],
)
def test_serve_in_sandbox_mode_leaves_no_process_behind(
    emptied_afterwards: str, tmp_path: Path, signum: int, workers: int
) -> None:
    temp = tmp_path / "tmp"  # where serve makes the workers' shared metrics folder
    temp.mkdir()
    env = cli_env(DATABASE_URL=emptied_afterwards) | {"TMPDIR": str(temp)}  # sandbox: a simulator beside it
    flags = ("--no-migrate", "--workers", str(workers), "--simulator-port", str(free_port()))  # not port + 1
    with serve(env, tmp_path / "serve.log", *flags) as gate:
        children = descendants(gate.proc.pid)
        simulators = [c for c in children if " simulator " in c.args]
        assert len(simulators) == 1, children
        assert len(children) >= 1 + (workers if workers > 1 else 0), children
        os.kill(gate.proc.pid, signum)
        gate.proc.wait(timeout=20)
        assert still_running(children, within=5) == []
    # A stop it catches is graceful: exit status 0, with one worker as with several.
    assert gate.proc.returncode == (-signum if signum == signal.SIGKILL else 0), gate.output()
    if signum != signal.SIGKILL:  # and leaves no metrics folder behind
        assert list(temp.glob("window-gate-metrics-*")) == []
