"""``nexus rebac``: relationship-based access control, through the ``rebac`` service.

The commands call the ``rebac`` service (``nexusfs-rebac``) in the kernel process with
``fs.call("rebac.<method>", ...)``; this module never imports the service's package (the
kernel never imports plugin code), so its typed errors arrive as ``NexusError`` with the
service's code and print as one line (``nexus: rebac duplicate tuple: ...``). Without a
running kernel process every command fails with one line saying to run ``nexus up``.

    nexus rebac model write FILE|-          make a model (OpenFGA DSL) current
    nexus rebac model show [--json] [--id ID]
    nexus rebac write --add TUPLE --delete TUPLE [--ignore-duplicates] [--ignore-missing]
    nexus rebac check USER RELATION OBJECT [--consistency TOKEN]   exit 0 allowed, 1 denied
    nexus rebac list-objects USER RELATION TYPE
    nexus rebac list-users OBJECT RELATION --type user [--type group#member]
    nexus rebac expand RELATION OBJECT
    nexus rebac read [--object P] [--relation P] [--user P]
    nexus rebac changes [--since TOKEN]
    nexus rebac revision

Tuples are written in OpenFGA's form ``document:1#viewer@user:anne``. ``write`` prints
the consistency token of the write; pass it as ``--consistency`` to a later command to
read at least that state. Evaluating commands accept ``--consistency``; listing commands
``--json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

import click

from nexusfs.cli.output import format_time, print_json, print_table
from nexusfs.cli.runtime import settings

if TYPE_CHECKING:
    from rich.console import JustifyMethod

__all__ = ["COMMANDS", "rebac_group"]

#: Exit status of ``check`` when the answer is "denied".
EXIT_DENIED = 1


@contextmanager
def _kernel() -> Iterator[Any]:
    """A client of the running kernel process (``ServiceUnavailable`` if none runs)."""
    from nexusfs.client import RemoteNexusFS
    from nexusfs.errors import ServiceUnavailable
    from nexusfs.server import daemon

    state = daemon.kernel_state(settings().data_dir)
    if state is None:
        raise ServiceUnavailable(
            "the rebac service runs in the kernel process and none is running "
            "(start it with 'nexus up')"
        )
    with RemoteNexusFS(state["socket"]) as fs:
        yield fs


def _call(method: str, **kwargs: Any) -> Any:
    with _kernel() as fs:
        return fs.call(f"rebac.{method}", **kwargs)


def _cols(*names: str) -> list[tuple[str, JustifyMethod]]:
    return [(name, "left") for name in names]


def _tuple_text(t: dict[str, Any]) -> str:
    return f"{t['object']}#{t['relation']}@{t['user']}"


_consistency = click.option(
    "--consistency", metavar="TOKEN", help="Answer at least as of this token (from write)."
)
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group("rebac")
def rebac_group() -> None:
    """Permissions: authorization models, relationship tuples, checks (Zanzibar)."""


# --------------------------------------------------------------------------- models


@rebac_group.group("model")
def model_group() -> None:
    """Authorization models (OpenFGA modeling language, schema 1.1)."""


@model_group.command("write")
@click.argument("source", type=click.File("r", encoding="utf-8"))
def model_write(source: IO[str]) -> None:
    """Make the model in file SOURCE ('-' for stdin) the current model."""
    dsl = source.read()
    model_id = _call("write_model", dsl=dsl)
    click.echo(f"model {model_id} is current")


@model_group.command("show")
@click.option("--id", "model_id", metavar="ID", help="A model version (default: current).")
@_json
def model_show(model_id: str | None, as_json: bool) -> None:
    """Print the current model (or version ID) in the modeling language."""
    model = _call("read_model", model_id=model_id)
    if as_json:
        print_json(model)
        return
    click.echo(f"# model {model['model_id']}, current since revision {model['revision']} "
               f"({format_time(model['created_at'])})")  # fmt: skip
    click.echo(model["dsl"].rstrip("\n"))


# --------------------------------------------------------------------------- tuples


@rebac_group.command("write")
@click.option("--add", "adds", multiple=True, metavar="TUPLE", help="A tuple to write (repeat).")
@click.option("--delete", "deletes", multiple=True, metavar="TUPLE",
              help="A tuple to delete (repeat).")  # fmt: skip
@click.option("--ignore-duplicates", is_flag=True, help="Skip tuples that already exist.")
@click.option("--ignore-missing", is_flag=True, help="Skip deletes of absent tuples.")
def write(adds: tuple[str, ...], deletes: tuple[str, ...], ignore_duplicates: bool,
          ignore_missing: bool) -> None:  # fmt: skip
    """Write and delete tuples (document:1#viewer@user:anne) in one atomic step; print
    the consistency token."""
    if not adds and not deletes:
        raise click.UsageError("give at least one --add or --delete")
    token = _call("write", writes=list(adds), deletes=list(deletes),
                  ignore_duplicates=ignore_duplicates, ignore_missing=ignore_missing)  # fmt: skip
    click.echo(token)


@rebac_group.command("read")
@click.option("--object", "object_", metavar="PREFIX", help="Objects starting with PREFIX.")
@click.option("--relation", metavar="PREFIX", help="Relations starting with PREFIX.")
@click.option("--user", metavar="PREFIX", help="Users starting with PREFIX.")
@click.option("--limit", default=1000, show_default=True, help="Print at most this many.")
@_json
def read(object_: str | None, relation: str | None, user: str | None, limit: int,
         as_json: bool) -> None:  # fmt: skip
    """List stored tuples, filtered by prefixes."""
    if limit < 1:
        raise click.BadParameter("must be at least 1", param_hint="--limit")
    rows: list[dict[str, Any]] = []
    more = False
    with _kernel() as fs:
        continuation = None
        while len(rows) < limit:
            want = min(1000, limit - len(rows))
            page = fs.call("rebac.read", object=object_, relation=relation, user=user,
                           limit=want, continuation=continuation)  # fmt: skip
            rows += page["tuples"]
            continuation = page["continuation"]
            if continuation is None:
                break
        more = continuation is not None
    if as_json:
        print_json(rows)
        return
    print_table(_cols("OBJECT", "RELATION", "USER"),
                [[t["object"], t["relation"], t["user"]] for t in rows])  # fmt: skip
    if more:
        click.echo(f"(first {len(rows)} shown; raise --limit for more)", err=True)


@rebac_group.command("changes")
@click.option("--since", metavar="TOKEN", help="Changes after this token (default: all).")
@click.option("--limit", default=100, show_default=True, help="At most this many (1-1000).")
@_json
def changes(since: str | None, limit: int, as_json: bool) -> None:
    """Print the change log (writes and deletes, oldest first) and the token to continue
    from."""
    page = _call("read_changes", since_token=since, limit=limit)
    if as_json:
        print_json(page)
        return
    print_table(
        _cols("REVISION", "OP", "TUPLE", "TIME"),
        [[str(c["revision"]), c["operation"], _tuple_text(c), format_time(c["time"])]
         for c in page["changes"]],
    )  # fmt: skip
    click.echo(f"next: {page['token']}")


@rebac_group.command("revision")
@_json
def revision(as_json: bool) -> None:
    """Print the service's revision, its token and the current model id."""
    rev = _call("revision")
    if as_json:
        print_json(rev)
        return
    click.echo(f"revision {rev['revision']} token {rev['token']} model {rev['model_id']}")


# ---------------------------------------------------------------------- evaluation


@rebac_group.command("check")
@click.argument("user")
@click.argument("relation")
@click.argument("object_", metavar="OBJECT")
@_consistency
def check(user: str, relation: str, object_: str, consistency: str | None) -> None:
    """Whether USER has RELATION on OBJECT: prints allowed (exit 0) or denied (exit 1)."""
    allowed = _call("check", user=user, relation=relation, object=object_,
                    consistency=consistency)  # fmt: skip
    click.echo("allowed" if allowed else "denied")
    if not allowed:
        raise click.exceptions.Exit(EXIT_DENIED)


@rebac_group.command("list-objects")
@click.argument("user")
@click.argument("relation")
@click.argument("type_", metavar="TYPE")
@_consistency
@_json
def list_objects(user: str, relation: str, type_: str, consistency: str | None,
                 as_json: bool) -> None:  # fmt: skip
    """Every object of TYPE on which USER has RELATION."""
    objects = _call("list_objects", user=user, relation=relation, type=type_,
                    consistency=consistency)  # fmt: skip
    if as_json:
        print_json(objects)
        return
    for obj in objects:
        click.echo(obj)


@rebac_group.command("list-users")
@click.argument("object_", metavar="OBJECT")
@click.argument("relation")
@click.option("--type", "user_types", multiple=True, required=True, metavar="TYPE",
              help="A user type: 'user' or a userset like 'group#member' (repeat).")  # fmt: skip
@_consistency
@_json
def list_users(object_: str, relation: str, user_types: tuple[str, ...],
               consistency: str | None, as_json: bool) -> None:  # fmt: skip
    """Every user (of the given types) that has RELATION on OBJECT."""
    got = _call("list_users", object=object_, relation=relation, user_types=list(user_types),
                consistency=consistency)  # fmt: skip
    if as_json:
        print_json(got)
        return
    for user in got["users"]:
        click.echo(user)
    if got["excluded"]:
        click.echo(f"except: {', '.join(got['excluded'])}")


@rebac_group.command("expand")
@click.argument("relation")
@click.argument("object_", metavar="OBJECT")
@_consistency
@_json
def expand(relation: str, object_: str, consistency: str | None, as_json: bool) -> None:
    """The userset tree of OBJECT#RELATION (one level)."""
    tree = _call("expand", relation=relation, object=object_, consistency=consistency)
    if as_json:
        print_json(tree)
        return
    for line in _tree_lines(tree, 0):
        click.echo(line)


def _tree_lines(node: dict[str, Any], depth: int) -> Iterator[str]:
    pad = "  " * depth
    name = node.get("name", "?")
    if "leaf" in node:
        leaf = node["leaf"]
        if "users" in leaf:
            yield f"{pad}{name}: {', '.join(leaf['users']) or '(no users)'}"
        elif "computed" in leaf:
            yield f"{pad}{name}: = {leaf['computed']['userset']}"
        else:
            ttu = leaf["tuple_to_userset"]
            computed = ", ".join(ttu["computed"]) or "(none)"
            yield f"{pad}{name}: from {ttu['tupleset']}: {computed}"
        return
    for op in ("union", "intersection"):
        if op in node:
            yield f"{pad}{name}: {op}"
            for child in node[op]["nodes"]:
                yield from _tree_lines(child, depth + 1)
            return
    if "difference" in node:
        yield f"{pad}{name}: difference"
        yield from _tree_lines(node["difference"]["base"], depth + 1)
        yield f"{pad}  but not"
        yield from _tree_lines(node["difference"]["subtract"], depth + 2)
        return
    yield f"{pad}{name}"


COMMANDS = (rebac_group,)
