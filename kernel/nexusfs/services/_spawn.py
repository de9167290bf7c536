"""How worker processes are started: command line, environment, socket path, and the
early start of a kernel's first workers before its event loop runs.

A kernel's first start is dominated by its service workers importing their plugins
(SQLAlchemy alone is a few hundred milliseconds). :func:`prestart` lets the daemon start
them with plain :class:`subprocess.Popen` the moment it holds the data directory's lock,
so their imports overlap the kernel's own start-up; the service host then adopts each
one (:class:`PrestartedWorker`) instead of spawning, as if it had started it itself.

Invariants:

* This module imports only the standard library (it runs before anything else in the
  daemon) and never imports plugin code.
* A prestarted worker gets its handshake token in its environment (never reused: the
  host accepts a token once) and waits for the service socket to appear, so it may start
  before the host listens. It is killed if the host never adopts it
  (:meth:`PrestartedWorker.discard`). The supervisor sees its ``Popen`` through
  :class:`nexusfs.services._worker_handle.PopenProcess`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TOKEN_ENV",
    "PrestartedWorker",
    "prestart",
    "services_socket_path",
    "worker_command",
    "worker_env",
]

_MAX_SUN_PATH = 100
#: The environment variable that carries a prestarted worker's handshake token (not its
#: command line: other users can read that in ``ps``). = ``worker.TOKEN_ENV``.
TOKEN_ENV = "NEXUSFS_SERVICE_TOKEN"


def services_socket_path(run_dir: Path) -> Path:
    """Where the service host of ``run_dir`` listens for its workers (short enough for
    ``AF_UNIX``: a private directory under ``$XDG_RUNTIME_DIR`` or ``/tmp`` otherwise)."""
    path = Path(run_dir) / "services.sock"
    if len(os.fsencode(path.resolve())) <= _MAX_SUN_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(path.resolve())).hexdigest()[:20]
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    return base / f"nexus-{os.getuid()}" / f"svc-{digest}.sock"


def worker_command(name: str, socket_path: Path, state_dir: Path, *,
                   token: bool = False) -> list[str]:
    """The worker's command line: ``--standby`` (the token arrives on stdin), or with
    ``token`` one that finds its token in ``$NEXUSFS_SERVICE_TOKEN`` and starts at once."""
    cmd = [sys.executable, "-m", "nexusfs.services.worker", "--name", name,
           "--socket", str(socket_path), "--state-dir", str(state_dir)]  # fmt: skip
    return cmd if token else [*cmd, "--standby"]


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra``, with ``PYTHONPATH`` covering the
    kernel package and this interpreter's ``sys.path`` (the worker finds what the
    kernel found) and unbuffered output (logs arrive as they are written)."""
    import nexusfs

    env = dict(os.environ)
    env.update(extra or {})
    pkg_root = str(Path(nexusfs.__file__).resolve().parent.parent)
    paths = [pkg_root, *[p for p in sys.path if p and os.path.isdir(p)]]
    if env.get("PYTHONPATH"):
        paths.insert(1, env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(slots=True)
class PrestartedWorker:
    """A worker started before the host, waiting to be adopted by its supervisor."""

    name: str
    token: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    #: The log's size when the worker started (its output starts there).
    log_offset: int

    def discard(self) -> None:
        """Kill it (its whole process group) and reap it; never raises."""
        with contextlib.suppress(OSError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self.popen.wait(timeout=5)


def prestart(names: Sequence[str], *, run_dir: Path, data_dir: Path,
             env: Mapping[str, str] | None = None) -> dict[str, PrestartedWorker]:
    """Start one worker per service name now (before the host listens; see the module
    docstring). A name whose process cannot be started (``OSError``) is left out: the
    supervisor then starts it the usual way and reports what fails."""
    socket_path = services_socket_path(run_dir)
    log_dir = Path(run_dir) / "services"
    log_dir.mkdir(parents=True, exist_ok=True)
    child_env = worker_env(env)
    out: dict[str, PrestartedWorker] = {}
    for name in names:
        token = secrets.token_urlsafe(18)
        log_path = log_dir / f"{name}.log"
        cmd = worker_command(name, socket_path, Path(data_dir) / "services" / name,
                             token=True)  # fmt: skip
        try:
            with open(log_path, "ab") as logf:
                offset = logf.seek(0, os.SEEK_END)
                popen = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                    env={**child_env, TOKEN_ENV: token}, start_new_session=True,
                    close_fds=True,
                )  # fmt: skip
        except OSError:
            continue
        out[name] = PrestartedWorker(name, token, popen, log_path, offset)
    return out
