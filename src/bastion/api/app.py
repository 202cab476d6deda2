"""ASGI app factory. Long-lived objects are built in the lifespan and kept on ``app.state``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from bastion.api.errors import install_handlers
from bastion.api.middleware.audit import AuditMiddleware
from bastion.api.middleware.auth import DISABLED_WARNING_EVERY, AuthMiddleware, auth_disabled
from bastion.api.middleware.body_limit import BodyLimitMiddleware
from bastion.api.middleware.request_id import RequestIdMiddleware
from bastion.api.middleware.trusted_host import TrustedHostMiddleware
from bastion.api.middleware.unexpected import UnexpectedErrorMiddleware
from bastion.api.routes import admin, openai, ops
from bastion.catalog import load_catalog
from bastion.engine import Engine
from bastion.engine.base import ModelSpec
from bastion.engine.factory import build_engine
from bastion.integrity.trust import local_key
from bastion.log import escape
from bastion.metrics import Metrics
from bastion.router import ModelRegistry
from bastion.router.registry import EngineFactory, StateListener
from bastion.security.api_keys import KeyStore
from bastion.security.audit import AuditTrail
from bastion.security.checkpoint_ship import CheckpointShipper
from bastion.settings import Settings

log = logging.getLogger(__name__)


async def _checkpoint_every(trail: AuditTrail, seconds: int) -> None:
    """Sign the audit chain's head every ``seconds`` (skipped while the log is idle)."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(trail.checkpoint, "periodic")
        except Exception as exc:  # noqa: BLE001 - one failure must not end the anchoring
            # Escaped: an error's text can quote a path or a value it did not like.
            log.error("audit checkpoint failed: %s", escape(str(exc), spaces=True))  # noqa: TRY400


async def _warn_while_open() -> None:
    """With authentication disabled, say so at start and every hour after."""
    while True:
        log.warning(
            "authentication is DISABLED (BASTION_DISABLE_AUTH=1): anyone who can "
            "reach this server can use it"
        )
        await asyncio.sleep(DISABLED_WARNING_EVERY)


def create_app(
    settings: Settings,
    home: Path,
    engine_factory: EngineFactory | None = None,
    *,
    on_state: StateListener | None = None,
) -> FastAPI:
    """The bastion ASGI app. ``engine_factory`` defaults to ``build_engine`` (each model's
    ``engine`` kind, with ``settings.engine``); ``on_state`` hears every model state change."""

    def default_factory(spec: ModelSpec) -> Engine:
        return build_engine(spec, settings.engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        catalog = load_catalog(home, settings.store.allowed_roots)
        registry = ModelRegistry(
            home,
            catalog,
            settings.server.default_model,
            engine_factory or default_factory,
            settings.router,
            require_signature=settings.integrity.require_signature,
            on_state=on_state,
        )
        registry.start()
        app.state.registry = registry
        app.state.catalog = catalog
        app.state.home = home
        nag = asyncio.create_task(_warn_while_open()) if auth_disabled() else None
        shipper.start()
        anchor = asyncio.create_task(_checkpoint_every(audit, settings.audit.checkpoint_interval))
        try:
            yield
        finally:
            if nag is not None:
                nag.cancel()
            anchor.cancel()
            try:
                await registry.close()
            finally:
                try:
                    # Requests have finished: this signs the log's final length.
                    audit.checkpoint("shutdown")
                finally:
                    shipper.close()  # also when the checkpoint failed: ship what is queued

    app = FastAPI(title="bastion", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    install_handlers(app)
    app.include_router(ops.router)
    app.include_router(openai.router)
    app.include_router(admin.router)
    # Added last = outermost. Order of execution: request id, audit, unexpected errors,
    # trusted host, CORS (when origins are configured), authentication, body limit, then the
    # routes.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.server.max_body_bytes,
        timeout=settings.server.body_timeout,
    )
    app.add_middleware(
        AuthMiddleware,
        keys=KeyStore(home),
        loopback_bypass=settings.auth.loopback_bypass,
        disabled=auth_disabled(),
        admin_certs=frozenset(settings.auth.admin_certs),
    )
    if settings.server.cors_origins:
        # Outside auth: a browser's preflight carries no credentials.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            # Any request header: SDKs add their own (the openai JS client sends
            # X-Stainless-*), and the origin list is what keeps other pages out.
            allow_headers=["*"],
            expose_headers=["X-Request-Id", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(TrustedHostMiddleware, trusted=settings.server.trusted_hosts)
    # Inside audit and request id: an unhandled exception is a 500 with the id, audited as 500.
    app.add_middleware(UnexpectedErrorMiddleware)
    # Outside auth and host checks, so refused requests are audited too (with their reason).
    app.state.metrics = metrics = Metrics()
    # On app.state too: the listeners audit the connections they refuse (api/server.py).
    shipper = CheckpointShipper(
        syslog=settings.audit.checkpoint_syslog, url=settings.audit.checkpoint_url
    )
    app.state.audit = audit = AuditTrail(
        home / "audit",
        max_bytes=settings.audit.max_bytes,
        unauthenticated_max_bytes=settings.audit.unauthenticated_max_bytes,
        signer=local_key(home),
        ship=shipper.submit,
    )
    app.add_middleware(
        AuditMiddleware,
        log=audit,
        metrics=metrics,
    )
    app.add_middleware(RequestIdMiddleware)
    return app
