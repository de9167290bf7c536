"""Test service ``echo``: RPC methods, a vetoing pre-hook and an event-recording
post-hook. Plain test code; it exercises every part of the service contract."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

from _marker import mark

from nexusfs.hookspecs import (
    ServiceContext,
    ServiceInfo,
    SyscallEvent,
    SyscallOutcome,
    Veto,
    hookimpl,
)

mark("nxtest_echo")


class EchoPlugin:
    ctx: ServiceContext

    @hookimpl
    def nexus_service_info(self) -> ServiceInfo:
        return ServiceInfo(
            name="echo", version="1.0", description="test echo service",
            pre_hooks=("write", "unlink"), post_hooks=("*",),
            idempotent=("echo", "pid", "slow", "add"),
        )

    @hookimpl
    def nexus_service_start(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        ctx.log.info("echo starting")

    @hookimpl
    def nexus_service_methods(self, ctx: ServiceContext) -> dict[str, Callable[..., Any]]:
        async def echo(**kw: Any) -> Any:
            return kw

        async def pid() -> int:
            return os.getpid()

        def add(a: int, b: int) -> int:
            return a + b

        async def slow(t: float, tag: Any = None) -> dict[str, Any]:
            await asyncio.sleep(t)
            return {"pid": os.getpid(), "tag": tag}

        async def slow_unsafe(t: float) -> int:
            await asyncio.sleep(t)
            return os.getpid()

        def crash() -> None:
            os._exit(7)

        async def hang() -> None:
            time.sleep(3600)  # blocks the event loop: only the heartbeat can see it

        def kernel_ping() -> Any:
            return ctx.kernel.call("kernel.ping") if ctx.kernel else None

        def fail() -> None:
            raise FileNotFoundError("nothing here")

        return {"echo": echo, "pid": pid, "add": add, "slow": slow,
                "slow_unsafe": slow_unsafe, "crash": crash, "hang": hang,
                "kernel_ping": kernel_ping, "fail": fail}

    @hookimpl
    def nexus_pre_syscall(self, ctx: ServiceContext, event: SyscallEvent) -> Veto | None:
        if event.path.startswith("/forbidden"):
            return Veto("no writes under /forbidden")
        if event.path.startswith("/boom"):
            raise RuntimeError("pre-hook exploded")
        return None

    @hookimpl
    def nexus_post_syscall(self, ctx: ServiceContext, event: SyscallEvent,
                           outcome: SyscallOutcome) -> None:
        if event.path.startswith("/slowpost"):
            time.sleep(0.05)
        with open(ctx.state_dir / "events.jsonl", "a") as f:
            f.write(json.dumps({"seq": event.seq, "op": event.op, "path": event.path,
                                "ok": outcome.ok, "pid": os.getpid()}) + "\n")


plugin = EchoPlugin()
