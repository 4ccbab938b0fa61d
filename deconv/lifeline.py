"""A child process tied to the server by a pipe: when the server is gone, however it ended, the child ends too."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LIFELINE_ENV = "DECONV_LIFELINE_FD"  # the number of the file descriptor a child watches (see Lifeline)


# Only the server holds a lifeline's write end (os.pipe's ends are not inheritable, and Popen closes every
# descriptor but pass_fds), so the child reads end-of-file when the server closes it or dies in any way, SIGKILL
# included. PR_SET_PDEATHSIG would not do: it fires when the *thread* that started the child exits, and Streamlit's
# script threads come and go while trainings run.
class Lifeline:
    """The write end of a pipe whose read end one child watches: when no write end is left, the child ends itself."""

    def __init__(self) -> None:
        self.child_end, self._write_end = os.pipe()
        self.closed = False
        self._lock = threading.Lock()  # the watcher and shutdown() may both close: twice could close a reused fd

    def close(self) -> None:
        """Let go of the child: a child still running ends at once (call it once the child has ended, or to end it)."""
        with self._lock:
            if not self.closed:
                self.closed = True
                os.close(self._write_end)


def spawn(argv: list[str], env: dict[str, str] | None, module: str = "deconv",
          **popen: Any) -> tuple[subprocess.Popen, Lifeline]:
    """Start `python -m MODULE ARGV` (the command line by default) in a session of its own, tied to this process by
    a lifeline; the module calls `watch_lifeline` first thing."""
    lifeline = Lifeline()
    child_env = {**(os.environ if env is None else env), LIFELINE_ENV: str(lifeline.child_end)}
    try:
        proc = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=ROOT, env=child_env,
                                pass_fds=(lifeline.child_end,), start_new_session=True, **popen)
    except OSError:
        lifeline.close()
        raise
    finally:
        os.close(lifeline.child_end)  # the child has its own copy; ours would only leak
    return proc, lifeline


def watch_lifeline() -> None:
    """In a child started by `spawn`: end this process, and its process group, as soon as the server is gone."""
    text = os.environ.pop(LIFELINE_ENV, None)  # once (a worker runs main() again for its job); not for grandchildren
    if text is None:
        return
    try:
        fd = int(text)
        os.fstat(fd)
    except (ValueError, OSError):
        logging.getLogger(__name__).warning("%s=%r is not an open file descriptor; this process will not end with "
                                            "the server", LIFELINE_ENV, text)
        return
    threading.Thread(target=_end_with_server, args=(fd,), name="deconv-lifeline", daemon=True).start()


def _end_with_server(fd: int) -> None:
    """Block until every write end of the lifeline is closed, then end at once (nothing to save for nobody)."""
    try:
        while os.read(fd, 1):  # the server never writes: any data is ignored, b"" is end-of-file
            pass
    except OSError as e:  # the descriptor was closed under us: the server's state is unknown, so keep running
        logging.getLogger(__name__).warning("lost the lifeline to the server (%s); this process will not end with it", e)
        return
    if os.getpgrp() == os.getpid():  # a group of our own (start_new_session): take any helper processes along
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(1)
