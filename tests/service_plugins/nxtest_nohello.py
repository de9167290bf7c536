"""Test service ``nohello``: never gets as far as the handshake."""

import time

from _marker import mark

from nexusfs.hookspecs import ServiceInfo, hookimpl

mark("nxtest_nohello")


class NoHello:
    @hookimpl
    def nexus_service_info(self) -> ServiceInfo:
        time.sleep(3600)
        return ServiceInfo(name="nohello", version="0.1")


plugin = NoHello()
