"""What one gateway process holds and owns: the routing table, the store, the limiter, the clients, and the
lifespan that opens and closes them in order."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Mapping

from starlette.applications import Starlette

from gateway import __version__
from gateway.accounting import Accountant
from gateway.auth.authenticator import Authenticator, AuthMode, is_loopback, resolve_mode
from gateway.config.providers import PROVIDERS
from gateway.config.reload import Reloader
from gateway.config.routing import ConfigError, RoutingTable, load_routes
from gateway.errors import InvalidConfig
from gateway.limits.admission import Guard
from gateway.limits.base import Limiter
from gateway.limits.memory import MemoryLimiter
from gateway.limits.policy import Defaults
from gateway.observability.metrics import Metrics
from gateway.proxy.dispatcher import Dispatcher
from gateway.sessions.service import Sessions
from gateway.settings import Settings
from gateway.store.base import Store
from gateway.store.sqlite import SQLiteStore
from gateway.upstream.base import Upstream
from gateway.upstream.http import HTTPUpstream

logger = logging.getLogger("gateway")


def make_store(settings: Settings) -> Store:
    if settings.store == "redis":
        # Imported only when used: the redis client adds ~15 MB to a process that does not need it.
        from gateway.store.redis import RedisStore  # noqa: PLC0415

        return RedisStore(settings.redis_url)
    return SQLiteStore(settings.state_dir)


def make_limiter(settings: Settings) -> Limiter:
    if (settings.rate_limit_storage or settings.store) == "redis":
        from gateway.limits.redis import RedisLimiter  # noqa: PLC0415 (see make_store)

        return RedisLimiter(settings.redis_url, settings.rate_limit_failure)
    return MemoryLimiter()


def preflight(settings: Settings) -> None:
    """Refuse, before binding, what the lifespan would refuse anyway, with a one-line message instead of a failed
    startup: an embedded state directory held by another process (`StateDirInUse`), and `auto` auth that would
    leave a non-loopback address without keys (`AuthRefused`). Redis is opened only to count keys, and only when
    that decides: a Redis that is down at start makes the gateway unready, not absent."""
    needs_count = settings.auth == "auto" and settings.admin_key is None and not is_loopback(settings.host)
    if settings.store == "redis" and not needs_count:
        return

    async def count() -> int:
        store = make_store(settings)
        await store.open()
        try:
            return await store.count_keys()
        finally:
            await store.close()

    key_count = asyncio.run(count())
    resolve_mode(settings.auth, admin_key_set=settings.admin_key is not None, key_count=key_count, host=settings.host)


class Runtime:
    """What one gateway process holds: the routing table, the store, and the clients and tasks around them."""

    def __init__(
        self,
        settings: Settings,
        *,
        environ: Mapping[str, str],
        routes: RoutingTable,
        upstreams: Mapping[str, Upstream],
        store: Store,
        limiter: Limiter,
    ) -> None:
        self.settings = settings
        self.environ = environ
        self.routes = routes
        self.http: HTTPUpstream | None = None
        self.upstreams = dict(upstreams)  # by provider name: the injected ones, then in-process ones as first used
        self.store = store
        self.authenticator = Authenticator(store, "keys", store.cache_ttl)
        self.accountant = Accountant(store)
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(self.upstream_for, self.current_routes, self.metrics)
        self.sessions = Sessions(
            self.current_routes,
            default_storage=settings.session_storage or settings.store,
            redis_url=settings.redis_url,
            ttl_seconds=settings.session_ttl,
            metrics=self.metrics,
        )
        limiter.on_error = lambda: self.metrics.redis_error("limiter")
        self.guard = Guard(
            limiter,
            store,
            defaults=Defaults(settings.rate_limit_requests_per_minute),
            queue_timeout=settings.queue_timeout,
            trusted_proxies=settings.trusted_proxies,
        )
        self.reloader = Reloader(
            self._load_routes,
            settings.config,
            watch=settings.watch_config,
            redis_url=settings.redis_url if settings.store == "redis" else None,
        )
        # Set by `gateway serve` on SIGTERM: /readyz says 503 while the requests in flight finish.
        self.draining = False

    def current_routes(self) -> RoutingTable:
        return self.routes

    def reload(self) -> RoutingTable:
        """Re-read the route config here and on every replica (POST /admin/reload); a bad one raises
        `InvalidConfig` and the old one keeps serving."""
        return self.reloader.reload("POST /admin/reload")

    def _load_routes(self, trigger: str) -> RoutingTable:
        """Re-read the route config; the new table replaces the old one whole (requests in flight keep theirs)."""
        try:
            table = load_routes(self.settings.config, self.environ)
        except ConfigError as exc:
            logger.warning(
                "route config not reloaded (%s), the old one keeps serving: %s", trigger, "; ".join(exc.problems)
            )
            raise InvalidConfig(exc.problems) from None
        self.routes = table
        logger.info("route config reloaded (%s): %d agent(s)", trigger, len(table.agents))
        return table

    async def _auth_mode(self) -> AuthMode:
        settings = self.settings
        if settings.auth != "auto" or settings.admin_key is not None:
            return resolve_mode(settings.auth, admin_key_set=settings.admin_key is not None, key_count=0, host="")
        try:
            key_count = await self.store.count_keys()
        except self.store.errors as exc:
            # Whether keys exist cannot be known: require them (fail closed) rather than let anyone in.
            logger.warning("cannot count keys (%s): requiring keys until restart", exc)
            return "keys"
        return resolve_mode(settings.auth, admin_key_set=False, key_count=key_count, host=settings.host)

    def upstream_for(self, name: str) -> Upstream:
        """How to reach the provider `name`: the shared HTTP pool, or its in-process upstream (config/providers.py)."""
        chosen = self.upstreams.get(name)
        if chosen is not None:
            return chosen
        known = PROVIDERS[name]
        if known.in_process:
            module, _, attribute = known.transport.partition(":")
            made: Upstream = getattr(importlib.import_module(module), attribute)()
            self.upstreams[name] = made
            return made
        if self.http is None:
            raise RuntimeError("the upstream client is opened by the app's lifespan, which has not run")
        return self.http

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        settings = self.settings
        await self.store.open()
        try:
            self.authenticator.mode = await self._auth_mode()
            await self.accountant.start()
            self.http = HTTPUpstream.open(settings.upstream_max_connections, settings.upstream_connect_timeout)
            names = ", ".join(agent.name for agent in self.routes.agents)
            logger.info("agent-gateway %s ready with %d agent(s): %s", __version__, len(self.routes.agents), names)
            logger.info(
                "auth: %s; store: %s; rate limits: %s; admin API: %s",
                self.authenticator.mode,
                self.store.name,
                self.guard.limiter.name,
                "on" if settings.admin_key else "off (set GATEWAY_ADMIN_KEY)",
            )
            kept = {
                agent.name: self.sessions.describe(agent) for agent in self.routes.agents if agent.spec.session.enabled
            }
            if kept:
                logger.info("sessions: %s", ", ".join(f"{name} in {where}" for name, where in kept.items()))
            for problem in self.routes.problems():
                logger.warning("%s", problem)
            for agent in self.routes.agents:
                if (
                    agent.spec.rate_limit.enabled
                    and agent.spec.rate_limit.storage == "redis" != self.guard.limiter.name
                ):
                    logger.warning(
                        "agent '%s' asks for Redis rate limiting; the gateway's limiter is %s "
                        "(set RATE_LIMIT_STORAGE=redis to share buckets between processes)",
                        agent.name,
                        self.guard.limiter.name,
                    )
            await self.reloader.start()
            yield
        finally:
            await self.reloader.stop()
            if self.http is not None:
                await self.http.close()
                self.http = None
            await self.guard.close()
            await self.sessions.close()
            await self.accountant.stop()  # after the last request: what they used is written before we exit
            await self.store.close()
