"""Test service ``crashloop``: its start hook always fails."""

from _marker import mark

from nexusfs.hookspecs import ServiceContext, ServiceInfo, hookimpl

mark("nxtest_crashloop")


class CrashLoop:
    @hookimpl
    def nexus_service_info(self) -> ServiceInfo:
        return ServiceInfo(name="crashloop", version="0.1")

    @hookimpl
    def nexus_service_start(self, ctx: ServiceContext) -> None:
        raise RuntimeError("crashloop cannot start")


plugin = CrashLoop()
