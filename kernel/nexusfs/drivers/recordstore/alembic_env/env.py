"""Alembic ``env.py`` for :func:`nexusfs.drivers.recordstore.migrations.run_migrations`.

It only runs "online" on the connection that ``run_migrations`` passes in
``config.attributes`` (already inside the transaction that holds the migration lock, so
``begin_transaction()`` adds no transaction of its own and the caller commits or rolls
back everything at once). Running it any other way (the ``alembic`` command line,
offline ``--sql`` mode) raises ``RuntimeError``: services are migrated through
``RecordStoreABC.migrate``.
"""

from __future__ import annotations

from alembic import context

_config = context.config
_connection = _config.attributes.get("connection")
if _connection is None or context.is_offline_mode():
    raise RuntimeError(
        "NexusFS service migrations run only through RecordStoreABC.migrate() "
        "(nexusfs.drivers.recordstore.migrations.run_migrations)"
    )

context.configure(
    connection=_connection,
    version_table=_config.attributes["version_table"],
    transactional_ddl=True,
    on_version_apply=_config.attributes.get("on_version_apply"),
)
with context.begin_transaction():
    context.run_migrations()
