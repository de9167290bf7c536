"""Alembic revisions of the test service (``store.migrate(..., version_table=...)``)."""
