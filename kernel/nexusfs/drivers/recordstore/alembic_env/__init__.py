"""The Alembic environment shared by every service's migrations (``env.py``).

Alembic runs ``env.py`` from here, while the revision files come from the service's own
directory (``version_locations``); see :mod:`nexusfs.drivers.recordstore.migrations`.
"""
