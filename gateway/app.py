"""The ASGI application: the `Gateway` (live state) and the HTTP surface around the hot path.

`/v1/chat/completions`, `/v1/completions` and `/v1/embeddings` go straight to
`gateway.proxy` (raw ASGI, no framework). Everything else (health, models, metrics,
usage, feedback, dashboard) is a small FastAPI app. Recording, metrics and judging
run after the response is sent (`Gateway.finish`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.accounting import pricing
from gateway.accounting.journal import make_journal
from gateway.accounting.metrics import Metrics
from gateway.accounting.quality import Judge
from gateway.accounting.recorder import Recorder
from gateway.accounting.records import JUDGE, RequestRecord
from gateway.accounting.store import make_store
from gateway.accounting.utilisation import Utilisation
from gateway.api import openapi as openapi_doc
from gateway.api.face import Face
from gateway.api.response_store import ResponseStore, ResponseStoreError, store_path
from gateway.api.responses_face import STORE_OFF, not_found
from gateway.cache.store import ResponseCache
from gateway.config import (
    ConfigError,
    GatewayKey,
    RoutingConfig,
    find_config,
    load_config,
    mask_keys,
)
from gateway.errors import GatewayError, InvalidRequest, UpstreamError, error_body
from gateway.proxy import (
    COUNT_TOKENS_PATH,
    FACES,
    HOT_PATHS,
    Proxy,
    Receive,
    Scope,
    Send,
    new_request_id,
)
from gateway.routing.policies import POLICIES
from gateway.routing.profiles import wants_router
from gateway.routing.runtime import Runtime, UpstreamPool
from gateway.routing.sticky import StickyMap
from gateway.tenants import admin
from gateway.tenants.auth import caller, presented_key, refuse, session_secret
from gateway.tenants.keys import KeyRefresher, KeyTable, make_key_store
from gateway.tenants.limits import Backend, Limits, RedisBackend, make_backend
from gateway.upstreams.pool import STATE_NAMES, Upstream

LOOP_LAG_INTERVAL_S = 0.1  # tollgate_event_loop_lag_seconds: ten samples a second

log = logging.getLogger("tollgate")


def _load_router(spec: str) -> Any:
    from router_models import load_router

    router = load_router(spec)
    if getattr(router.featurizer, "native", True):
        log.info("router %s loaded (%s featurizer)", router.version, router.featurizer.name)
    else:
        log.warning(
            "router %s loaded, but the lexical featurizer's C pass is not built: routing "
            "works with the numpy path, ~100 us slower per decision; reinstall with a C "
            "compiler (pip install .) to build router_models/_lexical.c",
            router.version,
        )
    return router


class Gateway:
    """Everything live: the current `Runtime`, the store, recorder, metrics and judge."""

    def __init__(self, cfg: RoutingConfig, config_path: str | None = None) -> None:
        self.config_path = config_path
        self.metrics = Metrics(
            max_label_length=cfg.server.metrics_max_label_length,
            max_series_per_metric=cfg.server.metrics_max_series_per_metric,
        )
        self.pool = UpstreamPool(self._on_circuit)
        self._router_spec = cfg.router.artifact
        self.router = self._router_for(cfg)
        self.runtime = Runtime(cfg, self.pool, self.router, config_path or "the routing file")
        self._metric_names()
        self.utilisation = Utilisation(cfg.utilisation.window_s)
        self._follow_utilisation()
        self._limits_backend: Backend | None = None
        self._retired_limits: list[Backend] = []
        self.limits = self._limits_for(cfg)
        self.keys: KeyTable  # set by the refresher: the routing file's keys, then the store's
        self.key_refresher = KeyRefresher(self, make_key_store(cfg.store))
        self.key_refresher.rebuild(cfg)
        self.key_refresher.apply(self.key_refresher.fetch())
        self.store = make_store(cfg.store)
        self.cache = ResponseCache(cfg)
        self.responses_store: ResponseStore | None = None  # responses.store: true
        self._responses_stores: list[ResponseStore] = []  # every one opened, closed at the end
        self._responses_for(cfg)
        self.sticky = StickyMap(cfg)  # conversation -> what served its previous turn
        self.recorder = Recorder(self.store, cfg.store, self.metrics, make_journal(cfg.store))
        self.judge = Judge(cfg.judge, self._judge_call, self.recorder, self.metrics)
        self._proxy = Proxy(self)  # the judge's calls go the way client traffic goes
        self.judge_enabled = bool(cfg.judge.model and cfg.judge.sample_rate > 0)
        self.reload_error: str | None = None
        self.loaded_at = time.time()
        self._config_seen = self._stat()
        self._tasks: list[asyncio.Task[None]] = []
        self._finished: list[tuple[RequestRecord, Any, str | None]] = []
        self.in_flight = 0  # client requests in Proxy.handle
        self.started_at = time.time()
        for up in self.pool.all():
            self.metrics.set_circuit(up.model_name, up.label, 0)

    # -- config ------------------------------------------------------------------------
    @property
    def config(self) -> RoutingConfig:
        return self.runtime.config

    def _router_for(self, cfg: RoutingConfig) -> Any | None:
        if not wants_router(cfg):
            return None
        if getattr(self, "router", None) is not None and cfg.router.artifact == self._router_spec:
            return self.router
        router = _load_router(cfg.router.artifact)
        self._router_spec = cfg.router.artifact
        return router

    def _limits_for(self, cfg: RoutingConfig) -> Limits:
        """The limits of `cfg` and of the stored keys; their backend is opened when something
        is limited, and kept while `limits:` and the store's Redis settings stay the same."""
        refresher = getattr(self, "key_refresher", None)
        stored: list[GatewayKey] = list(refresher.stored or []) if refresher is not None else []
        if not Limits.needed(cfg, stored):
            return Limits(cfg, None, stored)
        old = getattr(self, "limits", None)
        b = self._limits_backend
        if b is None or old is None or (old.config, old.store) != (cfg.limits, cfg.store):
            if b is not None:
                self._retired_limits.append(b)
            b = self._limits_backend = make_backend(cfg.limits, cfg.store)
        return Limits(cfg, b, stored)

    @property
    def session_secret(self) -> bytes:
        """What signs dashboard sessions (gateway/tenants/auth.py), found at the first
        sign-in or session check: every worker and replica finds the same one."""
        got: bytes | None = getattr(self, "_session_secret", None)
        if got is None:
            got, source = session_secret(
                self.config.auth.session_secret_path, self.key_refresher.master_key
            )
            self._session_secret = got
            log.info("dashboard sessions are signed with a secret from %s", source)
        return got

    def _responses_for(self, cfg: RoutingConfig) -> None:
        """The kept Responses answers, when responses.store is on (opened on first use; its
        file stays until restart, its bounds follow the routing file)."""
        if not cfg.responses.store:
            self.responses_store = None
            return
        if self._responses_stores:
            self.responses_store = self._responses_stores[0]
            self.responses_store.configure(cfg.responses)
            return
        self.responses_store = ResponseStore(cfg.responses, store_path(cfg.responses, cfg.store))
        self._responses_stores.append(self.responses_store)

    def keys_changed(self) -> None:
        """The key store's keys changed (gateway/tenants/keys.py): their limits apply from now."""
        self.limits = self._limits_for(self.config)

    def _stat(self) -> tuple[str, int, int, int, int] | None:
        """What the config path points at now: the file it resolves to through every symlink
        on the way and that file's identity, time and size. A Kubernetes ConfigMap volume
        swaps a `..data` symlink in the folder to a new folder of files; the new file has its
        own inode even when its time and size match the old one's (so has a file replaced
        with `mv`), so any such swap reads as a change."""
        if not self.config_path:
            return None
        try:
            real = os.path.realpath(self.config_path)
            st = os.stat(real)
        except OSError:
            return None
        return (real, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def reload(self, reason: str = "file changed") -> bool:
        """Swap in the file's config if it is valid; otherwise keep serving the old one."""
        if not self.config_path:
            return False
        self._config_seen = self._stat()
        try:
            cfg = load_config(self.config_path)
            if cfg.store != self.config.store:
                log.warning(
                    "store settings changed in %s; they take effect on restart", self.config_path
                )
            router = self._router_for(cfg)
            runtime = Runtime(cfg, self.pool, router, self.config_path)
        except (ConfigError, GatewayError) as e:
            # /readyz (unauthenticated) shows it: no text of the file there, the log has more
            self.reload_error = e.public if isinstance(e, ConfigError) else mask_keys(str(e))
            log.error(
                "config reload (%s) rejected, still serving the previous config: %s", reason, e
            )
            return False
        except Exception as e:  # a broken router artifact, say
            self.reload_error = mask_keys(f"{self.config_path}: {type(e).__name__}: {e}")
            log.error(
                "config reload (%s) failed, still serving the previous config: %s",
                reason,
                self.reload_error,
            )
            return False
        self.router = router
        self.runtime = runtime
        self.limits = self._limits_for(cfg)
        self._metric_names()
        self._follow_utilisation()
        self.key_refresher.rebuild(cfg)
        self.judge_enabled = bool(cfg.judge.model and cfg.judge.sample_rate > 0)
        self.judge.update(cfg.judge)
        self.cache.configure(cfg)  # opt-ins, TTL and bounds; the backend stays until restart
        self._responses_for(cfg)
        self.sticky.configure(cfg)
        self.reload_error = None
        self.loaded_at = time.time()
        for up in self.pool.all():
            self.metrics.set_circuit(up.model_name, up.label, up.circuit.state)
        log.info(
            "config reloaded (%s): %d models, %d routes", reason, len(cfg.models), len(cfg.routes)
        )
        return True

    def _metric_names(self) -> None:
        """Tell the metrics which names are configured: any other a client sends is "other"."""
        s = self.config.server
        self.metrics.limits(s.metrics_max_label_length, s.metrics_max_series_per_metric)
        self.metrics.names(self.runtime.public_names(), (f"router-{k}-" for k in POLICIES))

    def _follow_utilisation(self) -> None:
        rt = self.runtime
        self.utilisation.configure(
            rt.config.utilisation.window_s, rt.config.models, rt.pricing, rt.upstreams
        )
        self.metrics.local_models(list(self.utilisation.models))

    async def _watch_utilisation(self) -> None:
        """Local models' busy seconds into the utilisation buckets, once a bucket."""
        while True:
            await asyncio.sleep(self.utilisation.bucket_s)
            if self.utilisation.models:
                self.utilisation.sample()

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                if self._stat() != self._config_seen:
                    self.reload("file changed")
                await self.pool.reap()
            except Exception:  # the watcher must never die
                log.exception("config watcher error")

    async def _watch_loop_lag(self) -> None:
        """How late a LOOP_LAG_INTERVAL_S sleep wakes: the time the event loop spent on other
        work (bursts of requests, a slow callback) while this timer was due."""
        clock = time.perf_counter
        while True:
            t0 = clock()
            await asyncio.sleep(LOOP_LAG_INTERVAL_S)
            self.metrics.event_loop_lag(max(0.0, clock() - t0 - LOOP_LAG_INTERVAL_S))

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        # Everything loaded so far (config, router weights, modules) lives until shutdown:
        # move it out of the collector's sight so full collections stay short on the hot path.
        gc.collect()
        gc.freeze()
        await self.recorder.start()
        if self.responses_store is not None:
            try:  # a file a newer gateway wrote is refused now, not at the first request
                await self.responses_store.open()
            except ResponseStoreError as e:
                log.error("%s", e)
                raise
        self._tasks.append(asyncio.create_task(self._watch_config()))
        self._tasks.append(asyncio.create_task(self._watch_loop_lag()))
        self._tasks.append(asyncio.create_task(self._watch_utilisation()))
        self.key_refresher.start(lambda: self.config.auth.refresh_interval_s)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        # Requests the server's drain just cancelled still answer their client and hand over
        # their records: wait for them (briefly), then for their after-response work.
        deadline = time.monotonic() + 2.0
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._drain_finished()
        await self.judge.close()
        await self.key_refresher.close()
        await self.recorder.close(timeout=self.config.server.drain_timeout_s or 5.0)
        await self.cache.close()
        for rs in self._responses_stores:
            await rs.close()
        await self.sticky.close()
        await self.pool.aclose()
        for b in [*self._retired_limits, *([self._limits_backend] if self._limits_backend else [])]:
            if isinstance(b, RedisBackend):
                await b.aclose()
            else:
                b.close()

    # -- after the response ------------------------------------------------------------
    def price(self, rt: Runtime, rec: RequestRecord) -> None:
        if rec.model is None:
            return
        tokens = (
            rec.prompt_tokens,
            rec.completion_tokens,
            rec.cached_tokens,
            rec.cache_write_tokens,
        )
        rec.cost_usd = pricing.cost_at(rt.rates.get(rec.model, pricing.FREE), *tokens)
        base = rec.baseline_model or rec.model
        rec.baseline_model = base
        if base == rec.model:
            rec.baseline_cost_usd = rec.cost_usd
        else:
            rec.baseline_cost_usd = pricing.cost_at(rt.rates.get(base, pricing.FREE), *tokens)
        if rec.router_scores and rec.model in rec.router_scores:
            rec.quality_predicted = rec.router_scores[rec.model]

    def commit(self, rec: RequestRecord) -> None:
        """A final record, before its response's last byte: into the journal."""
        self.recorder.commit(rec)

    def finish(self, rt: Runtime, rec: RequestRecord, messages: Any, answer: str | None) -> None:
        """Queue the after-response work; one loop callback drains whatever has piled up."""
        self._finished.append((rec, messages, answer))
        if len(self._finished) == 1:
            asyncio.get_running_loop().call_soon(self._drain_finished)

    def _drain_finished(self) -> None:
        batch, self._finished = self._finished, []
        for rec, messages, answer in batch:
            self._after(rec, messages, answer)

    def _after(self, rec: RequestRecord, messages: Any, answer: str | None) -> None:
        try:
            self.metrics.observe(rec)
            if rec.key_id is not None and self.config.server.metrics_per_key:
                self.metrics.key_usage(rec.key_id, rec.cost_usd)
        except Exception:
            log.exception("metrics failed for %s", rec.request_id)
        if not rec.cache_hit:  # (a hit used no upstream)
            self.utilisation.served(rec.model, rec.prompt_tokens, rec.completion_tokens)
        if messages and rec.router_features is None and self.router is not None:
            # Judging is on: keep the prompt vector of every answered request, so its scores
            # can train model profiles later (router train --from-store). No text is stored.
            try:
                rec.router_features = self.router.featurize(messages).tolist()
            except Exception:
                log.exception("featurizing %s for the store failed", rec.request_id)
        self.recorder.submit(rec)
        if self.judge_enabled and rec.status == 200 and answer and messages:
            self.judge.maybe_judge(rec, messages, answer)

    async def _judge_call(self, messages: list[dict[str, Any]]) -> str:
        """One grading call of the sampled judge, made the way client traffic is (every
        endpoint of the judge model, circuit breakers, limiter, retries), priced, and
        recorded as a record with purpose "judge": judge spend, not client usage."""
        rt = self.runtime
        name = rt.config.judge.model
        if not name:
            raise RuntimeError("no judge model configured")
        rec = RequestRecord(request_id=new_request_id(), ts=time.time(), route=name, purpose=JUDGE)
        body = {"model": name, "messages": messages, "temperature": 0, "max_tokens": 64}
        try:
            data = await self._proxy.internal_chat(rt, name, body, rec)
        except GatewayError as e:
            rec.status, rec.error_type = e.status, e.type
            raise
        except asyncio.CancelledError:  # the judge's timeout, or shutdown
            rec.status, rec.error_type = 499, "cancelled"
            raise
        finally:
            self.metrics.judge_call(rec)
            self.recorder.submit(rec)
        try:
            return str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise UpstreamError(
                f"judge model {name!r} answered without choices[0].message.content", model=name
            ) from None

    def _on_circuit(self, up: Upstream, state: int) -> None:
        log.warning("circuit of %s (%s) is now %s", up.label, up.base_url, STATE_NAMES[state])
        self.metrics.set_circuit(up.model_name, up.label, state)

    # -- status ------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        rt = self.runtime
        models = {}
        any_up = False
        for name, ups in rt.upstreams.items():
            states = [STATE_NAMES[u.circuit.state] for u in ups]
            ok = any(u.circuit.available() for u in ups)
            any_up = any_up or ok
            models[name] = {
                "available": ok,
                "tier": rt.models[name].tier,
                "endpoints": [
                    {"endpoint": u.label, "circuit": s, "in_flight": u.outstanding}
                    for u, s in zip(ups, states, strict=True)
                ],
            }
        body = {
            "status": "ready" if any_up else "no_upstream_available",
            "auth_required": self.keys.required,
            "config": self.config_path or "(built in)",
            "config_loaded_at": self.loaded_at,
            "config_error": self.reload_error,
            "router": getattr(self.router, "version", None),
            "store": self.config.store.backend,
            "store_queue_depth": self.recorder.queue_depth,
            "models": models,
        }
        return any_up, body


def _openai_error(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        error_body(message, type_, param, code),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _shown(path: str, most: int = 200) -> str:
    """A client's path as an error message quotes it: the start of a long one, not all of it
    (a path may be as long as server.max_header_bytes)."""
    return path if len(path) <= most else path[:most] + "..."


def build_fastapi(gw: Gateway) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.close()

    app = FastAPI(
        title="Tollgate", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.gw = gw

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return _openai_error(
                404,
                f"no such endpoint: {request.method} {_shown(request.url.path)}; "
                "see GET /v1/models and the OpenAI API paths",
                "invalid_request_error",
                code="not_found",
            )
        if exc.status_code == 405:
            return _openai_error(
                405,
                f"{request.method} is not allowed on {_shown(request.url.path)}",
                "invalid_request_error",
                code="method_not_allowed",
            )
        return _openai_error(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return _openai_error(
            400, f"{param or 'request'}: {first['msg']}", "invalid_request_error", param=param
        )

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return Response(
            exc.body(),
            status_code=exc.status,
            media_type="application/json",
            headers={k.decode(): v.decode() for k, v in exc.headers()},
        )

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return Response(openapi_doc.DOCUMENT, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - gw.started_at, 3)}

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        ok, body = gw.readiness()
        if gw.keys.required and not gw.keys.is_master(
            gw.keys.lookup(presented_key(request.headers) or "")
        ):
            # open: ready or not; the details (config errors, circuits) need the master key
            body = {
                "status": body["status"],
                "auth_required": True,
                "details": "send the master key (TOLLGATE_MASTER_KEY) as a bearer token for "
                "config errors, circuits and the store",
            }
        return Response(
            orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json"
        )

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        who = caller(request, "GET /v1/models")
        if isinstance(who, Response):
            return who
        return Response(
            orjson.dumps({"object": "list", "data": gw.runtime.models_listing()}),
            media_type="application/json",
        )

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Response:
        who = caller(request, "GET /v1/models")
        if isinstance(who, Response):
            return who
        for m in gw.runtime.models_listing():
            if m["id"] == model_id:
                return Response(orjson.dumps(m), media_type="application/json")
        shown = model_id if len(model_id) <= 80 else f"{model_id[:77]}..."
        return _openai_error(
            404,
            f"the model {shown!r} does not exist on this gateway",
            "invalid_request_error",
            "model",
            "model_not_found",
        )

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        token = gw.config.server.metrics_token
        if token and not hmac.compare_digest(
            (request.headers.get("authorization") or "").encode(), f"Bearer {token}".encode()
        ):
            return refuse(
                401,
                "/metrics needs its token: send 'Authorization: Bearer <server.metrics_token>' "
                "(the scraper's bearer_token)",
                "missing_metrics_token",
            )
        gw.metrics.store_queue_depth(gw.recorder.queue_depth)
        gw.metrics.local_usage(gw.utilisation.report())
        body, ctype = gw.metrics.render()
        return Response(body, media_type=ctype)

    @app.api_route("/v1/responses/{resp_id}", methods=["GET", "DELETE"])
    async def kept_response(resp_id: str, request: Request) -> Response:
        """A kept Responses answer (responses.store): the key that made it may read or
        delete it; to any other key it does not exist."""
        who = caller(request, f"{request.method} /v1/responses/{{id}}")
        if isinstance(who, Response):
            return who
        store = gw.responses_store
        if store is None:
            e: GatewayError = not_found(resp_id)
            return _openai_error(404, f"{e.message}; {STORE_OFF}", e.type, None, e.code)
        key = who.id if gw.keys.required else ""
        try:
            if request.method == "DELETE":
                if not await store.delete(key, resp_id):
                    raise not_found(resp_id)
                body = {"id": resp_id, "object": "response.deleted", "deleted": True}
                return Response(orjson.dumps(body), media_type="application/json")
            got = await store.get(key, resp_id)
        except ResponseStoreError:
            return _openai_error(
                503,
                "the responses store cannot be reached; retry later",
                "service_unavailable",
                None,
                "store_unavailable",
            )
        if got is None:
            raise not_found(resp_id)
        return Response(orjson.dumps(got[0]), media_type="application/json")

    from gateway.accounting.usage import feedback_endpoint, usage_endpoint

    app.add_route("/v1/usage", usage_endpoint, methods=["GET"])
    app.add_route("/v1/feedback", feedback_endpoint, methods=["POST"])
    admin.mount(app)
    _mount_extras(app)
    return app


def _mount_extras(app: FastAPI) -> None:
    """Optional pages (the dashboard) live in their own module."""
    try:
        from gateway.views.dashboard import mount
    except ImportError:
        return
    mount(app)


class TollgateApp:
    """The ASGI entry point: the hot path first, the FastAPI app for everything else."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.proxy = Proxy(gw)
        self.api = build_fastapi(gw)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            hot = HOT_PATHS.get(path)
            if hot is not None:
                if scope["method"] != "POST":
                    await _post_only(send, path, None)
                    return
                await self.proxy.handle(scope, receive, send, *hot)
                return
            if path == COUNT_TOKENS_PATH:
                if scope["method"] != "POST":
                    await _post_only(send, path, FACES["/v1/messages"])
                    return
                await self.proxy.count_tokens(scope, receive, send)
                return
            face = FACES.get(path)
            if face is not None:  # an API face: the chat path, translated
                if scope["method"] != "POST":
                    await _post_only(send, path, face)
                    return
                await self.proxy.handle(
                    scope, receive, send, face.kind, "/chat/completions", face.check, face
                )
                return
        await self.api(scope, receive, send)  # type: ignore[arg-type]


async def _post_only(send: Send, path: str, face: Face | None) -> None:
    """The 405 for a hot path asked with another method (in the face's error format)."""
    e = InvalidRequest(f"use POST for {path}", status=405, code="method_not_allowed")
    await send(
        {
            "type": "http.response.start",
            "status": 405,
            "headers": [(b"content-type", b"application/json"), (b"allow", b"POST")],
        }
    )
    await send(
        {"type": "http.response.body", "body": e.body() if face is None else face.error_body(e)}
    )


def create_app(config_path: str | os.PathLike[str] | None = None) -> TollgateApp:
    path = str(find_config(config_path).path)
    cfg = load_config(path)
    return TollgateApp(Gateway(cfg, path))


def app_factory() -> TollgateApp:
    """For `uvicorn --factory gateway.app:app_factory` ($TOLLGATE_CONFIG, else ./tollgate.yaml,
    else the packaged default)."""
    return create_app()
