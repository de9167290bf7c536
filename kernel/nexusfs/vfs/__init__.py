"""The VFS layer: mount routing and the virtual ``/__sys__`` tree."""

from nexusfs.vfs.router import ROOT_ZONE, MountRouter

__all__ = ["ROOT_ZONE", "MountRouter"]
