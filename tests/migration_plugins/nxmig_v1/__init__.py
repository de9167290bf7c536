"""Release 1.0 of a test service whose tables are migrated with Alembic."""
