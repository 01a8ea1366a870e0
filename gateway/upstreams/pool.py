"""One upstream endpoint at run time: its pooled HTTP client, circuit breaker and slot limiter.

An `Upstream` outlives config reloads when its settings did not change, so pools,
circuit state and in-flight counts carry over (see `UpstreamPool`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import CircuitConfig, Endpoint, ModelConfig
from gateway.http.h1 import H1Pool

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
STATE_NAMES = {CLOSED: "closed", HALF_OPEN: "half_open", OPEN: "open"}


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; one half-open probe after `cooldown_s`."""

    __slots__ = (
        "cooldown_s",
        "failures",
        "on_change",
        "opened_at",
        "probing",
        "state",
        "threshold",
    )

    def __init__(self, cfg: CircuitConfig, on_change: Callable[[int], None] | None = None) -> None:
        self.threshold = cfg.failure_threshold
        self.cooldown_s = cfg.cooldown_s
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False
        self.on_change = on_change

    def _set(self, state: int) -> None:
        if state != self.state:
            self.state = state
            if self.on_change:
                self.on_change(state)

    def available(self) -> bool:
        """Could a request go through now? (Does not claim the half-open probe.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return time.monotonic() - self.opened_at >= self.cooldown_s
        return not self.probing

    def allow(self) -> bool:
        """Claim the right to send one request."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if time.monotonic() - self.opened_at < self.cooldown_s:
                return False
            self._set(HALF_OPEN)
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.failures = 0
        self.probing = False
        self._set(CLOSED)

    def failure(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.threshold:
            self.probing = False
            self.opened_at = time.monotonic()
            self._set(OPEN)

    def release_probe(self) -> None:
        """A probe that ended with neither verdict (e.g. the client went away)."""
        self.probing = False


class QueueFull(Exception):
    def __init__(self, waited: bool) -> None:
        self.waited = waited


class Limiter:
    """At most `cap` in flight; up to `max_queue` wait (FIFO) for `timeout_s`, then QueueFull."""

    __slots__ = ("cap", "in_use", "max_queue", "timeout_s", "waiters")

    def __init__(self, cap: int, max_queue: int, timeout_s: float) -> None:
        self.cap = cap
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.in_use = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def has_room(self) -> bool:
        return self.in_use < self.cap or len(self.waiters) < self.max_queue

    async def acquire(self) -> None:
        if self.in_use < self.cap and not self.waiters:
            self.in_use += 1
            return
        if len(self.waiters) >= self.max_queue:
            raise QueueFull(waited=False)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                return  # the slot arrived as the timer fired: keep it
            fut.cancel()
            raise QueueFull(waited=True) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed a slot but will not use it
            else:
                fut.cancel()
            raise

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand the slot over; in_use unchanged
                return
        self.in_use -= 1


@dataclass(frozen=True, slots=True)
class UpstreamKey:
    model: str
    upstream_model: str | None
    base_url: str
    api_key: str | None
    api: str
    anthropic_version: str
    connect_s: float
    read_s: float
    total_s: float
    max_concurrency: int
    max_queue: int
    queue_timeout_s: float
    threshold: int
    cooldown_s: float
    responses: bool


class Upstream:
    """A live endpoint of a model."""

    def __init__(
        self,
        model: ModelConfig,
        ep: Endpoint,
        index: int,
        circuit_cfg: CircuitConfig,
        on_circuit: Callable[[Upstream, int], None] | None = None,
    ) -> None:
        self.model_name = model.name
        self.upstream_model = ep.model or model.name
        self.upstream_model_bytes = self.upstream_model.encode()
        self.base_url = ep.base_url.rstrip("/")
        self.label = f"{model.name}#{index}"
        self.index = index  # its place in the model's endpoints (conversation stickiness)
        self.weight = ep.weight
        self.api = ep.api  # the API it speaks: "openai", or a face's (gateway/api/face.py)
        # the client APIs it speaks natively besides chat: its `api`, and the Responses API
        # when it says so (gateway/api/face.py passes a face's request through to it)
        self.apis = frozenset({ep.api, *(("responses",) if ep.responses else ())})
        headers = {"content-type": "application/json"}
        if ep.api == "anthropic":  # Anthropic's own credentials and version headers
            headers["anthropic-version"] = ep.anthropic_version
            if ep.api_key:
                headers["x-api-key"] = ep.api_key
        elif ep.api_key:
            headers["authorization"] = f"Bearer {ep.api_key}"
        self._secret = ep.api_key.encode() if ep.api_key else b""
        t = model.timeouts
        # A lean HTTP/1.1 pool (gateway/http/h1.py): httpx cost ~1.4 ms of CPU per request here.
        self.client = H1Pool(
            self.base_url,
            headers=headers,
            connect_timeout=t.connect_s,
            read_timeout=t.read_s,
            max_connections=model.max_concurrency,
            keepalive_expiry=30.0,
        )
        self.total_s = t.total_s
        self.limiter = Limiter(model.max_concurrency, model.max_queue, model.queue_timeout_s)
        self.circuit = CircuitBreaker(
            circuit_cfg, (lambda s: on_circuit(self, s)) if on_circuit else None
        )
        self.outstanding = 0
        # busy time (at least one request in flight), kept by gateway/proxy.py when the
        # in-flight count reaches or leaves 0; gateway/accounting/utilisation.py reads it
        self.busy_since = 0.0
        self.busy_s = 0.0

    def busy_total(self) -> float:
        """Seconds this endpoint has had a request in flight (perf_counter clock)."""
        if self.outstanding > 0:
            return self.busy_s + (time.perf_counter() - self.busy_since)
        return self.busy_s

    @staticmethod
    def key(model: ModelConfig, ep: Endpoint, circuit: CircuitConfig) -> UpstreamKey:
        return UpstreamKey(
            model.name,
            ep.model,
            ep.base_url.rstrip("/"),
            ep.api_key,
            ep.api,
            ep.anthropic_version,
            model.timeouts.connect_s,
            model.timeouts.read_s,
            model.timeouts.total_s,
            model.max_concurrency,
            model.max_queue,
            model.queue_timeout_s,
            circuit.failure_threshold,
            circuit.cooldown_s,
            ep.responses,
        )

    def scrub(self, text: bytes) -> bytes:
        """An upstream's error text without the endpoint's key (nor so its `Bearer <key>`
        form): an upstream that echoes the credential it got must not hand it to a client or
        a log. Only error paths call this."""
        secret = self._secret
        if secret and secret in text:
            return text.replace(secret, b"[redacted]")
        return text

    def can_serve(self) -> bool:
        return self.circuit.available() and self.limiter.has_room()

    async def aclose(self) -> None:
        await self.client.aclose()
