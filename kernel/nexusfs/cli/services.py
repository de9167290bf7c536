"""Commands for services: ``plugins``, ``service``, ``events`` and ``hooks``.

Services run only in the kernel process (``nexus up``), so these commands talk to it
and fail with one clear line when none is running. ``plugins`` manages packages (pip,
in the kernel's environment), ``service`` the running workers, ``events`` and ``hooks``
call the ``hooks`` service (``nexusfs-hooks``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from nexusfs.cli.output import format_time, print_json, print_table
from nexusfs.cli.runtime import settings

if TYPE_CHECKING:
    from rich.console import JustifyMethod

__all__ = ["COMMANDS"]


@contextmanager
def _kernel() -> Iterator[Any]:
    from nexusfs.client import RemoteNexusFS
    from nexusfs.errors import ServiceUnavailable
    from nexusfs.server import daemon

    state = daemon.kernel_state(settings().data_dir)
    if state is None:
        raise ServiceUnavailable(
            "services run in the kernel process and none is running (start it with 'nexus up')"
        )
    with RemoteNexusFS(state["socket"]) as fs:
        yield fs


def _cols(*names: str) -> list[tuple[str, JustifyMethod]]:
    return [(name, "left") for name in names]


# ------------------------------------------------------------------------- plugins


@click.group("plugins")
def plugins_group() -> None:
    """Installed service packages (like OS packages)."""


@plugins_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_list(as_json: bool) -> None:
    """Show installed services: name, package, version, state."""
    with _kernel() as fs:
        rows = fs.call("plugins.list")
    if as_json:
        print_json(rows)
        return
    print_table(
        _cols("NAME", "PACKAGE", "VERSION", "STATE", "PID"),
        [[r["name"], r["package"] or "-", r["version"] or "-", r["state"], str(r["pid"] or "-")]
         for r in rows],
    )  # fmt: skip


@plugins_group.command("install")
@click.argument("spec")
def plugins_install(spec: str) -> None:
    """Install a service package (a name, a path or a wheel) and start its services."""
    with _kernel() as fs:
        started = fs.call("plugins.install", spec=spec)
    click.echo(f"installed {spec}; started: {', '.join(started) or 'no new service'}")


@plugins_group.command("uninstall")
@click.argument("name")
def plugins_uninstall(name: str) -> None:
    """Stop service NAME and uninstall the package that provides it."""
    with _kernel() as fs:
        dist = fs.call("plugins.uninstall", name=name)
    click.echo(f"uninstalled {dist}")


# ------------------------------------------------------------------------- service


@click.group("service")
def service_group() -> None:
    """Running service workers: list, start, stop, restart, logs."""


@service_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def service_list(as_json: bool) -> None:
    """Show each service's state, pid, restarts and last error."""
    with _kernel() as fs:
        rows = fs.call("services.list")
    if as_json:
        print_json(rows)
        return
    print_table(
        _cols("NAME", "VERSION", "STATE", "PID", "RESTARTS", "LAST ERROR"),
        [[r["name"], r["version"] or "-", r["state"], str(r["pid"] or "-"),
          str(r["restarts"]), _first_line(r.get("last_error"))] for r in rows],
    )  # fmt: skip


def _first_line(text: str | None) -> str:
    if not text:
        return "-"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:80] if lines else "-"


def _service_action(action: str) -> click.Command:
    @click.command(action, help=f"{action.capitalize()} service NAME.")
    @click.argument("name")
    def command(name: str) -> None:
        with _kernel() as fs:
            t0 = time.monotonic()
            fs.call(f"services.{action}", name=name)
        click.echo(f"{name}: {action} done in {time.monotonic() - t0:.2f}s")

    return command


for _action in ("start", "stop", "restart"):
    service_group.add_command(_service_action(_action))


@service_group.command("logs")
@click.argument("name")
@click.option("-n", "--lines", default=100, show_default=True, help="How many lines.")
def service_logs(name: str, lines: int) -> None:
    """Print the last lines of a service worker's output."""
    with _kernel() as fs:
        click.echo(fs.call("services.logs", name=name, lines=lines))


# ------------------------------------------------------------------------- events


@click.group("events")
def events_group() -> None:
    """The audit log kept by the hooks service."""


def _print_events(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(rows)
        return
    print_table(
        _cols("SEQ", "TIME", "SUBJECT", "OP", "PATH", "RESULT"),
        [[str(e["seq"]), format_time(e["time"]), e.get("subject") or "-", e["op"],
          e["path"] + (f" -> {e['dst']}" if e.get("dst") else ""),
          "ok" if e["ok"] else (e.get("error_code") or "error")] for e in rows],
    )  # fmt: skip


@events_group.command("tail")
@click.option("-n", "--lines", "n", default=20, show_default=True, help="How many events.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one array per batch).")
def events_tail(n: int, follow: bool, as_json: bool) -> None:
    """Print the latest events (and follow new ones with -f)."""
    with _kernel() as fs:
        rows = fs.call("hooks.tail", n=n)
        _print_events(rows, as_json)
        last = rows[-1]["seq"] if rows else fs.call("hooks.last_seq")
        while follow:
            # A long-poll: the service answers as soon as an event is logged (woken by
            # its cache store, or by polling the log without one). Across a restart of
            # the service the call is retried on the new worker (it is idempotent).
            rows = fs.call("hooks.wait_events", after_seq=last, timeout=10.0)
            if rows:
                _print_events(rows, as_json)
                last = rows[-1]["seq"]


@events_group.command("query")
@click.option("--path", "path_prefix", help="A path and everything below it.")
@click.option("--subject", help="Who acted, e.g. user:alice.")
@click.option("--op", help="A syscall name, e.g. write.")
@click.option("--since", type=float, help="Unix time (inclusive).")
@click.option("--until", type=float, help="Unix time (exclusive).")
@click.option("--after", "after_seq", type=int, help="Only events after this sequence number.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def events_query(as_json: bool, **filters: Any) -> None:
    """Find events by path prefix, subject, operation, time and sequence."""
    args = {k: v for k, v in filters.items() if v is not None}
    with _kernel() as fs:
        _print_events(fs.call("hooks.query", **args), as_json)


# ------------------------------------------------------------------------- hooks


@click.group("hooks")
def hooks_group() -> None:
    """User hook rules: deny syscalls or emit events, by operation and path glob."""


@hooks_group.command("add")
@click.argument("op")
@click.argument("glob")
@click.argument("action", type=click.Choice(["deny", "emit"]))
@click.option("-m", "--message", help="The veto message (deny) or event name (emit).")
def hooks_add(op: str, glob: str, action: str, message: str | None) -> None:
    """Add a rule: OP (a syscall or '*') on paths matching GLOB -> ACTION."""
    with _kernel() as fs:
        rule = fs.call("hooks.add_rule", op=op, glob=glob, action=action, message=message)
    click.echo(f"rule {rule['id']}: {op} {glob} -> {action}")


@hooks_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def hooks_list(as_json: bool) -> None:
    """Show the rules."""
    with _kernel() as fs:
        rules = fs.call("hooks.list_rules")
    if as_json:
        click.echo(json.dumps(rules, indent=2))
        return
    print_table(
        _cols("ID", "OP", "GLOB", "ACTION", "MESSAGE"),
        [[str(r["id"]), r["op"], r["glob"], r["action"], r.get("message") or "-"]
         for r in rules],
    )  # fmt: skip


@hooks_group.command("rm")
@click.argument("rule_id", type=int)
def hooks_rm(rule_id: int) -> None:
    """Remove rule RULE_ID."""
    with _kernel() as fs:
        if not fs.call("hooks.remove_rule", rule_id=rule_id):
            from nexusfs.errors import NotFound

            raise NotFound(f"no hook rule {rule_id}")


COMMANDS = (plugins_group, service_group, events_group, hooks_group)
