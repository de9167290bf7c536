"""A real S3-compatible server for tests and benchmarks, with a bucket per test.

:func:`s3_endpoint` answers the endpoint URL of an S3-compatible server to test against:

1. ``$NEXUS_TEST_S3_ENDPOINT`` if set (e.g. a MinIO or moto server started by CI; the
   credentials then come from the usual ``AWS_*`` variables);
2. otherwise a private moto server (``python -m moto.server``, moto's standalone S3
   emulator: real HTTP on a real socket) that this module starts on ``127.0.0.1`` on a
   free port, once per process, stopped when the process exits;
3. otherwise ``None`` (moto is not installed, or its server failed to start). With
   ``NEXUS_TEST_REQUIRE_SERVERS=1`` that is an error instead: :class:`S3Unavailable`.

Tests call :func:`s3_endpoint_or_skip` (skip, or fail when servers are required), set
:func:`credentials_env` in their environment (dummy keys for the private server, which
accepts any), and make a fresh bucket per test with :func:`temporary_bucket`.
:class:`MotoServer` is also usable on its own, e.g. a server with authentication on
(``env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}``) to see bad credentials refused, or one
that a test stops to see an endpoint go away.

Invariants: a server started here listens on loopback only, keeps everything in memory
(its state dies with it) and does not outlive the process that started it (``atexit``,
plus ``PR_SET_PDEATHSIG`` on Linux: even a ``SIGKILL`` of the test process stops it;
the signal fires when the *thread* that started the server exits, so start servers from
a long-lived thread, as tests do). The server part uses only the standard library; the
bucket helpers import boto3 when called.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.client
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

from nexusfs.testing._servers import (
    REQUIRE_SERVERS_ENV,
    SharedServer,
    death_signal_setter,
    free_port,
    servers_required,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

__all__ = [
    "REQUIRE_SERVERS_ENV",
    "S3_ENDPOINT_ENV",
    "TEST_CREDENTIALS",
    "MotoServer",
    "S3Unavailable",
    "bucket_keys",
    "create_bucket",
    "credentials_env",
    "delete_bucket",
    "moto_available",
    "pending_uploads",
    "s3_client",
    "s3_endpoint",
    "s3_endpoint_or_skip",
    "s3_uri",
    "servers_required",
    "shared_moto_server",
    "temporary_bucket",
]

#: Environment variable naming an existing S3-compatible server to test against.
S3_ENDPOINT_ENV = "NEXUS_TEST_S3_ENDPOINT"
#: Credentials for the private moto server (it accepts any unless auth is turned on).
TEST_CREDENTIALS: Mapping[str, str] = {
    "AWS_ACCESS_KEY_ID": "nexus-test",
    "AWS_SECRET_ACCESS_KEY": "nexus-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}



class S3Unavailable(RuntimeError):
    """No S3-compatible server could be found or started (the message says why)."""



def _answers(host: str, port: int, timeout: float) -> bool:
    """Whether an HTTP server answers ``GET /`` on ``host:port`` (any status: a server
    with authentication on refuses the unsigned request, but it answers)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def moto_available() -> bool:
    """Whether moto's server mode can be started (``moto[server]`` is installed)."""
    try:
        return importlib.util.find_spec("moto.server") is not None and (
            importlib.util.find_spec("werkzeug") is not None
        )
    except ImportError:
        return False


class MotoServer:
    """One private moto S3 server on ``127.0.0.1:port`` (a free port if ``None``).

    ``env`` adds environment variables for the server process (moto reads its settings
    from there). The log goes to ``log_path`` in the server's temporary directory
    (removed by :meth:`close`). The port is kept across :meth:`stop`/:meth:`start`, so
    clients configured with :attr:`url` reach the restarted (empty) server.

    Failure semantics: :meth:`start` raises :class:`S3Unavailable` when moto is not
    installed or the server does not answer HTTP within ``timeout`` (then the process is
    killed and the log tail is in the message). :meth:`stop`/:meth:`kill`/:meth:`close`
    do not raise when the server is already stopped.
    """

    host = "127.0.0.1"

    def __init__(self, port: int | None = None, *, env: Mapping[str, str] | None = None) -> None:
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.env = dict(env or {})
        self._dir = Path(tempfile.mkdtemp(prefix="nexus-moto-"))
        self.log_path = self._dir / "moto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the endpoint URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or ``None``."""
        return self._proc.pid if self.running and self._proc is not None else None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server log (empty if none)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, timeout: float = 30.0) -> MotoServer:
        """Start the server (no-op if running) and wait until it answers HTTP."""
        with self._lock:
            if self.running:
                return self
            if not moto_available():
                raise S3Unavailable("moto's server mode is not installed "
                                    "(pip install 'moto[server]')")  # fmt: skip
            env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
            for attempt in range(1 if self._fixed_port else 3):
                if attempt:
                    self.port = free_port()  # the free port was taken meanwhile
                with open(self.log_path, "ab") as log:
                    self._proc = subprocess.Popen(
                        [sys.executable, "-m", "moto.server", "-H", self.host,
                         "-p", str(self.port)],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        preexec_fn=death_signal_setter(signal.SIGKILL),
                    )  # fmt: skip
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and self._proc.poll() is None:
                    if _answers(self.host, self.port, 1.0):
                        return self
                    time.sleep(0.05)
                self._terminate(signal.SIGKILL)
            raise S3Unavailable(
                f"moto server on {self.host}:{self.port} did not start within "
                f"{timeout:g} s; log:\n{self.log_tail()}"
            )

    def _terminate(self, sig: signal.Signals, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the server (``SIGTERM``; ``SIGKILL`` after ``timeout``); its buckets are
        gone. Idempotent."""
        with self._lock:
            self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the server with ``SIGKILL`` (a crash) and reap it. Idempotent."""
        with self._lock:
            self._terminate(signal.SIGKILL)

    def close(self) -> None:
        """Stop the server and remove its directory. Idempotent."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MotoServer({self.url}, {'running' if self.running else 'stopped'})"


_SHARED = SharedServer(MotoServer, S3Unavailable, env=S3_ENDPOINT_ENV, what="S3",
                       install="moto[server]", normalize=lambda url: url.rstrip("/"))


def shared_moto_server() -> MotoServer | None:
    """The process-wide private server behind :func:`s3_endpoint` (started on first
    use), or ``None`` when ``$NEXUS_TEST_S3_ENDPOINT`` is set or no server could be
    started (the reason is remembered and reported by :func:`s3_endpoint`). Tests that
    stop a server start their own :class:`MotoServer` instead."""
    return _SHARED.server()


def s3_endpoint() -> str | None:
    """The endpoint URL of an S3-compatible server to test against (see the module
    docstring), or ``None``. Raises :class:`S3Unavailable` instead of answering
    ``None`` when ``NEXUS_TEST_REQUIRE_SERVERS=1``."""
    return _SHARED.url()


def s3_endpoint_or_skip() -> str:
    """:func:`s3_endpoint` for tests: skips the test when there is no server, or fails
    it when servers are required. Needs ``pytest``."""
    return _SHARED.url_or_skip()


def credentials_env() -> dict[str, str]:
    """Environment variables a test should set so that boto3 finds credentials: the
    dummy :data:`TEST_CREDENTIALS` that are not already set when the private moto
    server is used; nothing for ``$NEXUS_TEST_S3_ENDPOINT`` (its keys come from the
    environment)."""
    if os.environ.get(S3_ENDPOINT_ENV, "").strip():
        return {}
    return {k: v for k, v in TEST_CREDENTIALS.items() if not os.environ.get(k)}


def s3_uri(endpoint: str, bucket: str, prefix: str = "", **options: str | int) -> str:
    """``s3://bucket/prefix?endpoint=...&region=us-east-1&...`` for a test store."""
    query = {"endpoint": endpoint, "region": "us-east-1", **{k: str(v) for k, v in
             options.items()}}  # fmt: skip
    path = "/" + prefix.strip("/") if prefix.strip("/") else ""
    return f"s3://{bucket}{path}?{urlencode(query)}"


def s3_client(endpoint: str) -> S3Client:
    """A boto3 S3 client for ``endpoint`` (path addressing, region us-east-1), with the
    environment's credentials or else the dummy test ones; one per endpoint and
    credentials, reused (clients are thread-safe and slow to build). Needs boto3."""
    if urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) endpoint URL: {endpoint!r}")
    creds = {**TEST_CREDENTIALS, **{k: os.environ[k] for k in TEST_CREDENTIALS
                                    if os.environ.get(k)}}  # fmt: skip
    return _client(endpoint, creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"],
                   os.environ.get("AWS_SESSION_TOKEN") or None)  # fmt: skip


@functools.lru_cache(maxsize=16)
def _client(endpoint: str, key: str, secret: str, token: str | None) -> S3Client:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
    )


def create_bucket(endpoint: str, prefix: str = "nexus-test") -> str:
    """Create a uniquely named, empty bucket and return its name."""
    name = f"{prefix}-{uuid.uuid4().hex[:20]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def bucket_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every object key in ``bucket`` under ``prefix``, sorted."""
    client = s3_client(endpoint)
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)


def pending_uploads(endpoint: str, bucket: str) -> list[str]:
    """The keys of the multipart uploads in progress in ``bucket`` (ListMultipartUploads)."""
    client = s3_client(endpoint)
    keys: list[str] = []
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        keys.extend(up["Key"] for up in page.get("Uploads", []))
    return sorted(keys)


def delete_bucket(endpoint: str, bucket: str) -> None:
    """Abort the bucket's multipart uploads, delete its objects and the bucket. A bucket
    that is already gone is fine; other failures raise (botocore errors)."""
    from botocore.exceptions import ClientError

    client = s3_client(endpoint)
    try:
        uploads = client.get_paginator("list_multipart_uploads")
        for upage in uploads.paginate(Bucket=bucket):
            for up in upage.get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"],
                                              UploadId=up["UploadId"])  # fmt: skip
        for opage in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            objects = [{"Key": obj["Key"]} for obj in opage.get("Contents", [])]
            if objects:
                client.delete_objects(Bucket=bucket, Delete={"Objects": objects})  # type: ignore[typeddict-item]
        client.delete_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise


@contextlib.contextmanager
def temporary_bucket(endpoint: str, prefix: str = "nexus-test") -> Iterator[str]:
    """A fresh bucket for the duration of the block, deleted (with its contents and
    pending uploads) afterwards."""
    name = create_bucket(endpoint, prefix)
    try:
        yield name
    finally:
        delete_bucket(endpoint, name)
