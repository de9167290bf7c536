"""The VFS layer: mount routing and the virtual ``/__sys__`` tree."""

from nexusfs.vfs.router import DEFAULT_STORE, ROOT_ZONE, MountRouter

__all__ = ["DEFAULT_STORE", "ROOT_ZONE", "MountRouter"]
