"""
The process around ``Daemon``: signals, the metrics server, the HTTP client.

SIGTERM and SIGINT set the stop event: the batch in progress finishes (every
staple write is atomic and every state write one transaction), then the
process exits 0. SIGHUP loads the configuration again: sources, sockets,
refresh policy, responder overrides and log format apply at once, after all
of it (every source included) was read and checked; a bad one changes
nothing. The state directory, the metrics address and the responder
connections need a restart (and say so).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import TYPE_CHECKING

import uvloop
from aiohttp import web

from hastaple.config import Config, is_loopback, split_address
from hastaple.daemon import eventlog as events
from hastaple.daemon import metrics
from hastaple.daemon.eventlog import log_event
from hastaple.daemon.scheduler import Daemon
from hastaple.daemon.state import State
from hastaple.engine.fetch import Fetcher, Limits, OCSPReply
from hastaple.errors import HastapleError

if TYPE_CHECKING:
    from hastaple.stores.coordinator import Coordinator

# aiohttp's trust_env reads these at each request (urllib prefers the lower case).
logger = logging.getLogger(__name__)
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


class ConfiguredFetcher(Fetcher):
    """The pipeline's fetcher, asking an operator's replacement URL where configured."""

    def __init__(self, config: Config, *, environ: MutableMapping[str, str] | None = None) -> None:
        super().__init__(Limits(per_host=config.responder_connections))
        self.environ = os.environ if environ is None else environ
        # What the process started with, so a reload that drops `proxy` restores it.
        self._started = {name: self.environ.get(name) for name in _PROXY_VARS}
        self.config = config
        self.configure(config)

    def configure(self, config: Config) -> None:
        """
        Use ``config`` from now on: its responder overrides and its proxy.

        The configured proxy goes into HTTP(S)_PROXY, which aiohttp's trust_env
        reads; without one, the variables are as the process started.
        """
        self.config = config
        for name, started in self._started.items():
            value = config.proxy or started
            if value is None:
                self.environ.pop(name, None)
            else:
                self.environ[name] = value

    async def ocsp(self, url: str, request_der: bytes) -> OCSPReply:
        """Ask ``config.responder(url)`` instead of ``url``."""
        return await super().ocsp(self.config.responder(url), request_der)


def run(load: Callable[[], Config]) -> int:
    """Run the daemon until SIGTERM; ``load`` reads the configuration (again on SIGHUP)."""
    return uvloop.run(_main(load))


async def _main(load: Callable[[], Config]) -> int:
    config = load()
    events.configure(config.log_format)
    state = State.open(config.state_dir)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stopper(stop, sig))
    runner: web.AppRunner | None = None
    try:
        async with ConfiguredFetcher(config) as fetcher, _fleet(config) as fleet:
            daemon = Daemon(config, fetcher=fetcher, state=state, fleet=fleet)
            if fleet is not None:
                _attach_fleet(daemon, fleet)
            if config.metrics_address is not None:
                runner = await _serve_metrics(daemon, config.metrics_address)
            loop.add_signal_handler(signal.SIGHUP, lambda: _reload(daemon, fetcher, load))
            log_event(logging.INFO, "started", state_dir=config.state_dir)
            # What exists now (modules, configuration) lives until exit: keep
            # the cyclic collector from scanning it again at every full
            # collection, as fetch does (about 20 us per certificate of a
            # cold start). Refcounting still frees what of it is dropped.
            gc.freeze()
            await daemon.serve(stop)
    finally:
        if runner is not None:
            await runner.cleanup()
        state.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log_event(logging.INFO, "stopped")
    return 0


@contextlib.asynccontextmanager
async def _fleet(config: Config) -> AsyncIterator[Coordinator | None]:
    """The fleet of ``config.fleet``, or None; redis-py is imported only when it is set."""
    if not config.fleet:
        yield None
        return
    from hastaple.stores.coordinator import connected  # noqa: PLC0415

    lease = config.fleet_lease.total_seconds()
    async with connected(config.fleet, prefix=config.fleet_prefix, lease=lease) as coordinator:
        log_event(
            logging.INFO, "fleet", url=coordinator.fleet.address.display,
            node=coordinator.fleet.node, up=coordinator.fleet.up,
        )  # fmt: skip
        yield coordinator


def _attach_fleet(daemon: Daemon, coordinator: Coordinator) -> None:
    """Announcements make certificates due; a reconnect wakes the loop; status and metrics."""
    from hastaple.daemon.fleet_metrics import FleetCollector  # noqa: PLC0415
    from hastaple.stores import fleet_status  # noqa: PLC0415

    coordinator.fleet.on_published = daemon.fleet_published
    coordinator.fleet.on_resync = daemon.wake.set
    # ``status`` reads the fleet from the state directory: refreshed at every heartbeat.
    coordinator.fleet.on_beat = lambda: fleet_status.write(daemon.config.state_dir, coordinator)
    daemon.metrics.registry.register(FleetCollector(coordinator.fleet))


def _stopper(stop: asyncio.Event, sig: signal.Signals) -> Callable[[], None]:
    def handler() -> None:
        log_event(logging.INFO, "stopping", signal=sig.name)
        stop.set()

    return handler


async def _serve_metrics(daemon: Daemon, address: str) -> web.AppRunner:
    host, port = split_address(address)
    if not is_loopback(host):
        log_event(logging.WARNING, "metrics_exposed", address=address)
    runner, bound = await metrics.serve(metrics.app(daemon.metrics, daemon.health), host, port)
    log_event(logging.INFO, "metrics", address=f"{host}:{bound}")
    return runner


def _reload(daemon: Daemon, fetcher: ConfiguredFetcher, load: Callable[[], Config]) -> None:
    """
    SIGHUP: read and check everything first, then switch in one step.

    The new configuration is loaded and its sources discovered (every file
    read, every serial parsed) before anything changes; if any of it raises,
    the running configuration is kept whole (sources, sockets, policy,
    responder overrides, proxy, log format). Only then are the daemon, the
    fetcher and the log format switched, with no await in between.
    """
    old = daemon.config
    try:
        loaded = load()
        # These two need a restart (and say so below): the running ones stay in force.
        new = dataclasses.replace(
            loaded,
            state_dir=old.state_dir,
            metrics_address=old.metrics_address,
            responder_connections=old.responder_connections,
            fleet=old.fleet,
            fleet_prefix=old.fleet_prefix,
            fleet_lease=old.fleet_lease,
        )
        view = daemon.prepare(new)
        daemon.apply(view)  # writes the state first: a failure there changes nothing
    except HastapleError as exc:
        log_event(logging.ERROR, "reload_failed", error=str(exc), kept="old configuration")
        return
    except Exception:  # a bug must not leave half a configuration behind either
        logger.exception("internal error while reloading; old configuration kept")
        return
    fetcher.configure(new)
    events.configure(new.log_format)
    needs_restart = ("state_dir", "metrics_address", "responder_connections", "fleet",
                     "fleet_prefix", "fleet_lease")  # fmt: skip
    for name in needs_restart:
        if getattr(loaded, name) != getattr(old, name):
            log_event(logging.WARNING, "restart_needed", key=name)
    log_event(logging.INFO, "reloaded", certs=len(daemon.entries), sockets=len(daemon.sockets))
