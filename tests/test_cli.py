"""Tests of the ``nexus`` CLI (``nexusfs.cli``).

Most tests drive the click group in-process with ``CliRunner`` on a fresh data
directory; the ``subprocess`` tests run ``python -m nexusfs.cli`` for real (exit codes,
stderr, binary stdout/stdin, Ctrl-C, a terminal for the progress bar, lazy imports).
The CLI opens ``nexusfs.connect`` (the redb metastore), so everything is skipped when
the native extension is not built.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import nexusfs
from nexusfs.cli.app import cli
from nexusfs.cli.output import human_size
from nexusfs.cli.runtime import describe_error
from nexusfs.errors import AlreadyExists, InvalidPath, IsADirectory, MountError, NotFound


def _native_available() -> bool:
    try:
        return importlib.util.find_spec("nexusfs._native") is not None
    except ModuleNotFoundError:
        return False


needs_native = pytest.mark.skipif(
    not _native_available(), reason="nexusfs._native is not built (run scripts/setup.sh)"
)

MiB = 1 << 20
KERNEL_DIR = str(Path(nexusfs.__file__).resolve().parents[1])

Run = Callable[..., Result]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "nexus-data"


@pytest.fixture
def nx(data_dir: Path) -> Iterator[Run]:
    """``nx("ls", "/", input=b"...", code=0)``: run the CLI in-process on an initialised
    data directory and check the exit code (``code=None`` skips the check)."""
    runner = CliRunner()

    def run(*args: str, input: bytes | str | None = None, code: int | None = 0) -> Result:
        result = runner.invoke(cli, ["--data-dir", str(data_dir), *args], input=input)
        if code is not None:
            assert result.exit_code == code, (
                f"nexus {' '.join(args)} -> {result.exit_code}\n"
                f"stdout: {result.stdout!r}\nstderr: {result.stderr!r}\n{result.exception!r}"
            )
        return result

    if _native_available():
        run("init")
    yield run


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (KERNEL_DIR, env.get("PYTHONPATH")) if p)
    env.pop("NEXUS_DATA_DIR", None)
    env.pop("NEXUS_DURABILITY", None)
    env.update(extra)
    return env


def sh(
    data_dir: Path, *args: str, input: bytes | None = None, **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m nexusfs.cli --data-dir DATA_DIR ARGS`` in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "nexusfs.cli", "--data-dir", str(data_dir), *args],
        input=input,
        capture_output=True,
        env=_env(),
        timeout=120,
        **kw,
    )


def one_line_error(stderr: bytes | str, *needles: str) -> str:
    """Assert stderr is exactly one ``nexus: ...`` line (no traceback) with ``needles``."""
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("nexus: "), text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in lines[0], (needle, text)
    return lines[0]


# --------------------------------------------------------------------------- pure helpers


def test_human_size() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(20 * MiB) == "20.0 MiB"
    assert human_size(3 << 40) == "3.0 TiB"


def test_describe_error_is_one_clear_line() -> None:
    assert describe_error(NotFound("no such file or directory", path="/a/b")) == "not found: /a/b"
    assert describe_error(IsADirectory("is a directory (use rm -r)", path="/d")) == (
        "is a directory: /d (use rm -r)"
    )
    assert describe_error(AlreadyExists("file exists", path="/f")) == "already exists: /f"
    msg = describe_error(InvalidPath("path must be absolute", path="rel"))
    assert msg == "invalid path: rel: path must be absolute"
    assert describe_error(MountError("bad\nuri")) == "mount error: bad\nuri"
    err = FileNotFoundError(2, "No such file or directory", "/tmp/x")
    assert describe_error(err) == "/tmp/x: No such file or directory"
    assert describe_error(ValueError("a\n  b")) == "a b"


def test_help_works_without_a_data_dir(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "none"), "--help"])
    assert result.exit_code == 0
    for command in ("init", "write", "cat", "ls", "put", "get", "mount", "zone", "gc"):
        assert f"  {command} " in result.stdout
    assert not (tmp_path / "none").exists()


def test_help_does_not_import_rich_or_the_kernel() -> None:
    code = (
        "import sys\n"
        "from nexusfs.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'rich' or m in\n"
        "       ('nexusfs._native', 'nexusfs.kernel', 'nexusfs.drivers.metastore.redb')]\n"
        "print('LOADED:' + ','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Usage:" in proc.stdout
    assert proc.stdout.decode().splitlines()[-1] == "LOADED:", proc.stdout.decode()


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["--data-dir", str(tmp_path), "nosuch"]).exit_code == 2
    assert runner.invoke(cli, ["--data-dir", str(tmp_path), "ls", "--bogus"]).exit_code == 2
    result = runner.invoke(cli, ["--durability", "sometimes", "ls"])
    assert result.exit_code == 2
    assert "sometimes" in result.stderr


# --------------------------------------------------------------------------- init


@needs_native
def test_init_is_idempotent(tmp_path: Path) -> None:
    d = tmp_path / "a" / "data"
    runner = CliRunner()
    first = runner.invoke(cli, ["--data-dir", str(d), "init"])
    assert first.exit_code == 0, first.output
    assert "Initialized" in first.stdout and str(d.resolve()) in first.stdout
    assert d.is_dir() and any(d.iterdir())
    again = runner.invoke(cli, ["--data-dir", str(d), "init"])
    assert again.exit_code == 0
    assert "already initialized" in again.stdout


@needs_native
def test_commands_need_init(tmp_path: Path) -> None:
    d = tmp_path / "missing"
    result = CliRunner().invoke(cli, ["--data-dir", str(d), "ls", "/"])
    assert result.exit_code == 1
    one_line_error(result.stderr, "nexus init", str(d))
    assert not d.exists()


@needs_native
def test_data_dir_from_environment(tmp_path: Path) -> None:
    d = tmp_path / "env-data"
    runner = CliRunner(env={"NEXUS_DATA_DIR": str(d)})
    assert runner.invoke(cli, ["init"]).exit_code == 0
    assert runner.invoke(cli, ["write", "/e"], input=b"env").exit_code == 0
    assert CliRunner().invoke(cli, ["--data-dir", str(d), "cat", "/e"]).stdout_bytes == b"env"


# --------------------------------------------------------------------------- files


@needs_native
def test_write_from_stdin_and_file_then_cat(nx: Run, tmp_path: Path) -> None:
    nx("write", "/notes/a.txt", input=b"hello\n")
    assert nx("cat", "/notes/a.txt").stdout_bytes == b"hello\n"
    blob = bytes(range(256)) * 400 + os.urandom(1000)  # > inline size, every byte value
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    nx("write", "/notes/blob.bin", str(src))
    assert nx("cat", "/notes/blob.bin").stdout_bytes == blob
    nx("write", "/notes/b.txt", "-", input=b"B")
    assert nx("cat", "/notes/a.txt", "/notes/b.txt").stdout_bytes == b"hello\nB"
    nx("write", "/empty", input=b"")
    assert nx("cat", "/empty").stdout_bytes == b""
    assert json.loads(nx("stat", "--json", "/empty").stdout)["size"] == 0


@needs_native
def test_write_exclusive_and_if_version(nx: Run) -> None:
    nx("write", "--if-version", "0", "/v", input=b"one")
    version = json.loads(nx("stat", "--json", "/v").stdout)["version"]
    r = nx("write", "--exclusive", "/v", input=b"two", code=1)
    one_line_error(r.stderr, "already exists", "/v")
    r = nx("write", "--if-version", str(version + 100), "/v", input=b"two", code=1)
    one_line_error(r.stderr, "conflict", "/v")
    assert nx("cat", "/v").stdout_bytes == b"one"
    nx("write", "--if-version", str(version), "/v", input=b"two")
    assert nx("cat", "/v").stdout_bytes == b"two"
    assert json.loads(nx("stat", "--json", "/v").stdout)["version"] > version


@needs_native
def test_ls_plain_long_recursive_json(nx: Run) -> None:
    nx("mkdir", "-p", "/d/sub")
    nx("write", "/d/f.txt", input=b"x" * 3000)
    nx("write", "/d/sub/g", input=b"g")
    nx("write", "/top", input=b"t")
    assert nx("ls").stdout.splitlines() == ["d/", "top"]
    assert nx("ls", "/d").stdout.splitlines() == ["f.txt", "sub/"]
    assert nx("ls", "-R", "/d").stdout.splitlines() == ["f.txt", "sub/", "sub/g"]
    assert nx("ls", "-R", "/").stdout.splitlines() == ["d/", "d/f.txt", "d/sub/", "d/sub/g", "top"]
    assert nx("ls", "/d/f.txt").stdout.splitlines() == ["/d/f.txt"]

    entries = json.loads(nx("ls", "--json", "-R", "/d").stdout)
    assert [e["path"] for e in entries] == ["/d/f.txt", "/d/sub", "/d/sub/g"]
    assert [e["type"] for e in entries] == ["file", "directory", "file"]
    assert entries[0]["size"] == 3000 and entries[0]["version"] > 0

    lines = nx("ls", "-l", "/d").stdout.splitlines()
    header = lines[0].split()
    assert header == ["TYPE", "SIZE", "VERSION", "MODIFIED", "NAME"]
    rows = [line.split() for line in lines if line.split()[:1] in (["file"], ["dir"])]
    assert len(rows) == 2
    file_row, dir_row = rows
    assert file_row[0] == "file" and file_row[1:3] == ["2.9", "KiB"] and file_row[-1] == "f.txt"
    assert dir_row[0] == "dir" and dir_row[1] == "-" and dir_row[-1] == "sub/"
    assert len(file_row[-3]) == 10 and file_row[-3].count("-") == 2  # a YYYY-MM-DD date


@needs_native
def test_ls_limit_and_cursor_page_through_everything(nx: Run) -> None:
    names = [f"f{i:02d}" for i in range(7)]
    for name in names:
        nx("write", f"/many/{name}", input=name.encode())
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        args = ["ls", "--limit", "3", "/many"] + (["--cursor", cursor] if cursor else [])
        result = nx(*args)
        seen += result.stdout.split()
        if "--cursor" not in result.stderr:
            break
        cursor = result.stderr.split("--cursor", 1)[1].strip()
    assert seen == names
    assert json.loads(nx("ls", "--json", "--limit", "2", "/many").stdout)[1]["path"] == (
        "/many/f01"
    )


@needs_native
def test_stat(nx: Run) -> None:
    nx("write", "/s/file", input=b"abc")
    meta = json.loads(nx("stat", "--json", "/s/file").stdout)
    assert meta["path"] == "/s/file" and meta["type"] == "file" and meta["size"] == 3
    assert len(meta["content_id"]) == 64 and meta["zone"] == "root"
    plain = nx("stat", "/s/file").stdout
    assert "type:" in plain and "file" in plain and "size:" in plain
    assert json.loads(nx("stat", "--json", "/s").stdout)["type"] == "directory"


@needs_native
def test_mkdir(nx: Run) -> None:
    nx("mkdir", "-p", "/a/b/c", "/x/y")
    assert nx("ls", "-R", "/a").stdout.split() == ["b/", "b/c/"]
    nx("mkdir", "-p", "/a/b/c")  # exists: fine with -p
    r = nx("mkdir", "/a/b/c", code=1)
    one_line_error(r.stderr, "already exists", "/a/b/c")
    r = nx("mkdir", "/no/parent", code=1)
    one_line_error(r.stderr, "not found", "/no")
    nx("mkdir", "/a/new")
    assert "new/" in nx("ls", "/a").stdout.split()


@needs_native
def test_rm_and_rmdir(nx: Run) -> None:
    nx("write", "/t/f1", input=b"1")
    nx("write", "/t/sub/f2", input=b"2" * 50_000)
    nx("write", "/k", input=b"k")
    r = nx("rm", "/t", code=1)
    one_line_error(r.stderr, "is a directory", "/t", "rm -r")
    r = nx("rmdir", "/t", code=1)
    one_line_error(r.stderr, "not empty", "/t")
    r = nx("rm", "/missing", "/k", code=1)  # goes on after a failure
    one_line_error(r.stderr, "not found", "/missing")
    assert nx("ls").stdout.split() == ["t/"]
    nx("rm", "-f", "/missing")
    nx("rm", "/t/f1")
    nx("rm", "-r", "/t")
    assert nx("ls").stdout == ""
    nx("mkdir", "/e")
    nx("rmdir", "/e")
    r = nx("rm", "-r", "/", code=1)
    one_line_error(r.stderr)


@needs_native
def test_mv_and_cp(nx: Run) -> None:
    nx("write", "/a", input=b"A")
    nx("mv", "/a", "/b")
    assert nx("ls").stdout.split() == ["b"]
    nx("mkdir", "/dir")
    nx("mv", "/b", "/dir")  # into the directory
    assert nx("cat", "/dir/b").stdout_bytes == b"A"
    nx("cp", "/dir/b", "/c")
    nx("cp", "/c", "/dir/c2")
    assert nx("cat", "/c").stdout_bytes == b"A" and nx("cat", "/dir/c2").stdout_bytes == b"A"
    big = os.urandom(100_000)
    nx("write", "/dir/big", input=big)
    r = nx("cp", "/dir", "/copy", code=1)
    one_line_error(r.stderr, "is a directory", "cp -r")
    nx("cp", "-r", "/dir", "/copy")
    assert nx("ls", "-R", "/copy").stdout.split() == ["b", "big", "c2"]
    assert nx("cat", "/copy/big").stdout_bytes == big
    nx("mkdir", "/dir/inner")
    r = nx("mv", "/dir", "/dir/inner", code=1)
    one_line_error(r.stderr, "/dir")
    r = nx("mv", "/nope", "/x", code=1)
    one_line_error(r.stderr, "not found", "/nope")


@needs_native
def test_put_get_directory_trees(nx: Run, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "one").write_bytes(b"1")
    (src / "sub" / "two").write_bytes(os.urandom(40_000))
    r = nx("put", str(src), "/up", code=1)
    one_line_error(r.stderr, "put -r")
    nx("put", "-r", str(src), "/up")
    assert nx("ls", "-R", "/up").stdout.split() == ["one", "sub/", "sub/two"]
    nx("put", str(src / "one"), "/up/sub/")  # trailing '/': into the directory
    assert nx("cat", "/up/sub/one").stdout_bytes == b"1"
    out = tmp_path / "down"
    nx("get", "-r", "/up", str(out))
    assert (out / "sub" / "two").read_bytes() == (src / "sub" / "two").read_bytes()
    assert (out / "one").read_bytes() == b"1"
    nx("get", "/up/one", str(out / "sub"))  # into a local directory
    assert (out / "sub" / "one").read_bytes() == b"1"
    assert nx("get", "/up/one", "-").stdout_bytes == b"1"
    r = nx("get", "/up/missing", str(tmp_path / "never"), code=1)
    one_line_error(r.stderr, "not found")
    assert not (tmp_path / "never").exists()
    assert not [p for p in out.rglob("*.part")]


# --------------------------------------------------------------------------- mounts, zones


@needs_native
def test_mount_local_store(nx: Run, tmp_path: Path) -> None:
    store = tmp_path / "ext-store"
    uri = f"local://{store}"
    nx("mount", "/ext", uri)
    mounts = json.loads(nx("mounts", "--json").stdout)
    assert {"path": "/ext", "uri": uri, "kind": "store"}.items() <= mounts[-1].items()
    assert [m["path"] for m in mounts] == ["/", "/ext"]
    assert "/ext" in nx("mounts").stdout
    data = os.urandom(200_000)  # not inline: the blob lands in the mounted store
    nx("write", "/ext/blob", input=data)
    assert nx("cat", "/ext/blob").stdout_bytes == data
    assert sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) >= len(data)
    r = nx("unmount", "/ext", code=1)
    one_line_error(r.stderr, "/ext")
    nx("rm", "/ext/blob")
    nx("unmount", "/ext")
    assert [m["path"] for m in json.loads(nx("mounts", "--json").stdout)] == ["/"]
    r = nx("mount", "/bad", "nosuch://x", code=1)
    one_line_error(r.stderr, "mount error")
    r = nx("unmount", "/never", code=1)
    one_line_error(r.stderr, "not a mount point")


@needs_native
def test_zones(nx: Run) -> None:
    nx("zone", "create", "team-a")
    zones = json.loads(nx("zone", "list", "--json").stdout)
    assert [z["name"] for z in zones] == ["root", "team-a"]
    assert zones[1]["mounted_at"] is None
    r = nx("zone", "create", "team-a", code=1)
    one_line_error(r.stderr, "already exists")
    r = nx("zone", "create", "Bad Name", code=1)
    one_line_error(r.stderr, "invalid")
    nx("mount", "/team", "zone://team-a")
    nx("write", "/team/doc", input=b"zoned")
    meta = json.loads(nx("stat", "--json", "/team/doc").stdout)
    assert meta["zone"] == "team-a"
    assert json.loads(nx("zone", "list", "--json").stdout)[1]["mounted_at"] == "/team"
    table = nx("zone", "list").stdout
    assert "team-a" in table and "/team" in table
    assert "team/ -> zone://team-a" in nx("ls", "-l").stdout
    nx("unmount", "/team")
    assert nx("ls").stdout == ""
    nx("mount", "/again", "zone://team-a")  # the zone kept its data
    assert nx("cat", "/again/doc").stdout_bytes == b"zoned"
    r = nx("mount", "/z", "zone://nosuch", code=1)
    one_line_error(r.stderr, "not found")


@needs_native
def test_gc_and_flush(nx: Run) -> None:
    for i in range(3):  # overwrites drop the previous blobs
        nx("write", "/big", input=bytes([i]) * 100_000)
    nx("flush")
    report = json.loads(nx("gc", "--grace", "0", "--json").stdout)
    assert report["kept_referenced"] == 1
    assert report["scanned"] == report["kept_referenced"] + report["reclaimed"]
    again = json.loads(nx("gc", "--grace", "0", "--dry-run", "--json").stdout)
    assert again == {
        "scanned": 1,
        "reclaimed": 0,
        "bytes_reclaimed": 0,
        "kept_referenced": 1,
        "kept_young": 0,
        "dry_run": True,
    }
    text = nx("gc", "--dry-run").stdout
    assert text.startswith("scanned 1 blobs; would reclaim 0")
    assert nx("cat", "/big").stdout_bytes == b"\x02" * 100_000
    r = nx("gc", "--grace", "-1", code=2)
    assert "Traceback" not in r.output


@needs_native
def test_durability_option(nx: Run, data_dir: Path) -> None:
    runner = CliRunner()
    args = ["--data-dir", str(data_dir), "--durability", "immediate"]
    assert runner.invoke(cli, [*args, "write", "/i"], input=b"now").exit_code == 0
    assert runner.invoke(cli, [*args, "cat", "/i"]).stdout_bytes == b"now"


# --------------------------------------------------------------------------- errors


@needs_native
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("cat", "/missing/file"), ("not found", "/missing/file")),
        (("cat", "relative/path"), ("invalid path", "relative/path")),
        (("cat", "/a/../b"), ("invalid path",)),
        (("ls", "/nope"), ("not found", "/nope")),
        (("stat", "/nope"), ("not found",)),
        (("cat", "/"), ("is a directory",)),
        (("write", "/__sys__/x"), ("permission denied",)),
    ],
)
def test_errors_are_one_line(nx: Run, args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    r = nx(*args, input=b"", code=1)
    one_line_error(r.stderr, *needles)
    assert r.stdout == ""


@needs_native
def test_keyboard_interrupt_exits_130_quietly(nx: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from nexusfs.kernel import NexusFS

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(NexusFS, "iter_read", interrupted)
    nx("write", "/f", input=b"x")
    r = nx("cat", "/f", code=130)
    assert r.stdout == "" and r.stderr == ""


# --------------------------------------------------------------------------- subprocess


@needs_native
def test_subprocess_round_trip(tmp_path: Path) -> None:
    d = tmp_path / "data"
    proc = sh(d, "init")
    assert proc.returncode == 0 and b"Initialized" in proc.stdout
    binary = bytes(range(256)) * 64 + b"\r\n\x00\x1a"
    assert sh(d, "write", "/bin/data", input=binary).returncode == 0
    src = tmp_path / "text.txt"
    src.write_bytes(b"from a file\n")
    assert sh(d, "write", "/bin/text", str(src)).returncode == 0
    cat = sh(d, "cat", "/bin/data")
    assert cat.returncode == 0 and cat.stdout == binary and cat.stderr == b""
    assert sh(d, "cat", "/bin/text").stdout == b"from a file\n"
    listing = json.loads(sh(d, "ls", "--json", "-R", "/").stdout)
    assert [e["path"] for e in listing] == ["/bin", "/bin/data", "/bin/text"]
    assert json.loads(sh(d, "stat", "--json", "/bin/data").stdout)["size"] == len(binary)


@needs_native
def test_subprocess_errors(tmp_path: Path) -> None:
    d = tmp_path / "data"
    assert sh(d, "init").returncode == 0
    for args, needle in [
        (("cat", "/no/such/file"), "not found: /no/such/file"),
        (("cat", "no-slash"), "invalid path"),
        (("rm", "/"), "/"),
    ]:
        proc = sh(d, *args)
        assert proc.returncode == 1, (args, proc)
        assert proc.stdout == b""
        one_line_error(proc.stderr, needle)
    assert sh(d, "mkdir", "/dir").returncode == 0
    proc = sh(d, "rm", "/dir")
    assert proc.returncode == 1
    one_line_error(proc.stderr, "is a directory: /dir")
    proc = sh(d, "frobnicate")
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr


@needs_native
def test_subprocess_put_get_20_mib(tmp_path: Path) -> None:
    d = tmp_path / "data"
    assert sh(d, "init").returncode == 0
    payload = os.urandom(20 * MiB)
    local = tmp_path / "payload.bin"
    local.write_bytes(payload)
    put = sh(d, "put", str(local), "/big/payload.bin")
    assert put.returncode == 0, put.stderr.decode()
    assert put.stderr == b""  # stderr is a pipe: no progress bar
    meta = json.loads(sh(d, "stat", "--json", "/big/payload.bin").stdout)
    assert meta["size"] == len(payload) and meta["store"] is not None
    back = tmp_path / "back.bin"
    get = sh(d, "get", "/big/payload.bin", str(back))
    assert get.returncode == 0 and get.stderr == b""
    assert back.read_bytes() == payload
    assert sh(d, "cat", "/big/payload.bin").stdout == payload
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


@needs_native
def test_subprocess_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    pty = pytest.importorskip("pty")
    d = tmp_path / "data"
    assert sh(d, "init").returncode == 0
    local = tmp_path / "p.bin"
    local.write_bytes(os.urandom(12 * MiB))
    small = tmp_path / "s.bin"
    small.write_bytes(b"s" * 1000)

    def put_on_tty(path: Path, remote: str) -> tuple[int, bytes]:
        master, slave = pty.openpty()
        chunks: list[bytes] = []

        def drain() -> None:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                if not data:
                    return
                chunks.append(data)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "nexusfs.cli",
                    "--data-dir",
                    str(d),
                    "put",
                    str(path),
                    remote,
                ],
                stdout=subprocess.PIPE,
                stderr=slave,
                env=_env(TERM="xterm", COLUMNS="100"),
                timeout=120,
            )
        finally:
            os.close(slave)
            reader.join(timeout=10)
            os.close(master)
        return proc.returncode, b"".join(chunks)

    code, tty_out = put_on_tty(local, "/p.bin")
    assert code == 0
    assert b"p.bin" in tty_out and b"MiB" in tty_out  # the bar: name, sizes
    code, tty_out = put_on_tty(small, "/s.bin")
    assert code == 0 and tty_out == b""  # small file: no bar even on a terminal


@needs_native
def test_subprocess_ctrl_c_exits_130_and_writes_nothing(tmp_path: Path) -> None:
    d = tmp_path / "data"
    assert sh(d, "init").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexusfs.cli", "--data-dir", str(d), "write", "/partial"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdin is not None
    # The pipe holds ~64 KiB: once 3 MiB went in, the CLI is inside its read loop.
    proc.stdin.write(b"x" * (3 * MiB))
    proc.stdin.flush()
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert err == b""
    proc2 = sh(d, "stat", "/partial")
    assert proc2.returncode == 1  # the interrupted write was discarded
    one_line_error(proc2.stderr, "not found")


@needs_native
def test_subprocess_broken_pipe_is_quiet(tmp_path: Path) -> None:
    d = tmp_path / "data"
    assert sh(d, "init").returncode == 0
    assert sh(d, "write", "/big", input=os.urandom(4 * MiB)).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexusfs.cli", "--data-dir", str(d), "cat", "/big"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert b"Traceback" not in err
    assert proc.returncode != 0
