"""Alembic revisions of the rebac service's tables (``nexusfs_rebac:migrations``).

Applied by :func:`nexusfs_rebac.tables.upgrade_schema` through
``record_store.migrate(...)`` with the version table ``nexusfs_rebac_version``. Each
file here is one revision (``revision``, ``down_revision``, ``upgrade()``); a new
release of the package adds a file whose ``down_revision`` is the previous head. Rules
for new revisions: never edit a released one; keep them additive while an older worker
may still run (hot restart), and never use statements that cannot run inside a
transaction. ``downgrade()`` exists for completeness; services are never downgraded
automatically.
"""
