"""Child processes that end with their parent, however the parent ends (SIGKILL included).

`serve` runs the sandbox simulator beside it, and uvicorn's supervisor runs the workers. An orphan keeps
its port and, for the simulator, goes on answering as Meta for a gate that is gone. On Linux the kernel
sends the child SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere a thread polls for it.
SIGTERM is the usual graceful stop: uvicorn shuts down and the simulator saves its state.
"""

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.5


def exit_with(parent_pid: int) -> None:
    """SIGTERM to this process when `parent_pid`, its parent, exits (at once if it already has)."""
    if not _death_signal(signal.SIGTERM):
        threading.Thread(target=_watch, args=(parent_pid,), name="lifeline", daemon=True).start()
        return
    if os.getppid() != parent_pid:  # died before we asked: the kernel will not tell us any more
        os.kill(os.getpid(), signal.SIGTERM)


def _death_signal(signum: int) -> bool:
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return bool(libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0)


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
