"""The routing YAML: its schema, `${VAR}` expansion, loading and error reporting.

The file is the single source of truth. It is validated in full at start-up and on
every reload; an error names the file, the field path, what was wrong and the fix.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

TIER_ORDER: dict[str, int] = {"small": 0, "medium": 1, "large": 2, "external": 3}
Tier = Literal["small", "medium", "large", "external"]
# The default routing file ships inside the package (the wheel has no config/ folder);
# `tollgate init` writes a copy to start from.
DEFAULT_CONFIG_PATH = Path(str(resources.files("gateway") / "defaults" / "routing.yaml"))
# the routing file a command finds in its current directory
LOCAL_CONFIG_NAME = "tollgate.yaml"

PolicyKind = Literal["cheapest_above", "max_utility", "threshold"]
# What a request asks for, by its API path: chat (/v1/chat/completions), completions,
# embeddings, responses (/v1/responses) and messages (Anthropic's /v1/messages). A model
# serves a kind natively when its `kinds:` lists it (responses: when its endpoints have
# `responses: true`); the API faces' kinds (FACE_KINDS) are also served by translation to
# chat by any model that serves chat (`serves`).
KINDS: tuple[str, ...] = ("chat", "completions", "embeddings", "responses", "messages")
# the virtual model names gateway/routing/policies.py resolves: router-<policy kind>-<number>
_ROUTED_RE = re.compile(
    r"^router-(" + "|".join(get_args(PolicyKind)) + r")-[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?$"
)


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The routing file could not be loaded; `str()` is a message fit for an operator (a
    line it quotes has anything like a key masked), `public` one fit for anyone: where and
    what kind of problem, no text of the file (the unauthenticated /readyz shows it)."""

    def __init__(self, path: str, problems: list[str], public: list[str] | None = None) -> None:
        self.path = path
        self.problems = problems
        self.public_problems = [_public(p) for p in (problems if public is None else public)]
        super().__init__(f"{path}: invalid routing config:\n  - " + "\n  - ".join(problems))

    @property
    def public(self) -> str:
        return (
            f"{self.path}: invalid routing config: " + "; ".join(self.public_problems) + " "
            f"(`tollgate check-config {self.path}` and the gateway log say more)"
        )


# what looks like a secret: a known key prefix, or a token with a run of 20+ letters and digits
# mixed (model ids such as gpt-4o-mini-2024-07-18 have no such run)
_KEYLIKE = re.compile(
    r"(?<![A-Za-z0-9_+=-])(?:"
    r"(?:sk|hf|gsk|ghp|gho|glpat)[-_][A-Za-z0-9_+=-]{16,}|AKIA[0-9A-Z]{16}"
    r"|[A-Za-z0-9_+=-]*?(?=[A-Za-z]*[0-9])(?=[0-9]*[A-Za-z])[A-Za-z0-9]{20,}[A-Za-z0-9_+=-]*)"
)
# a quoted value (no spaces, 5 characters or more; PyYAML's token names such as '<block end>'
# stay): what a problem quotes from the file
_QUOTED = re.compile(r"'(?!<)[^'\s]{5,}'|\"[^\"\s]{5,}\"")


def mask_keys(text: str) -> str:
    """`text` with everything that looks like a key masked as `mask` does."""
    return _KEYLIKE.sub(lambda m: mask(m.group()), text)


def _public(problem: str) -> str:
    """A problem without the values it quotes from the file (and keys masked besides)."""
    return mask_keys(_QUOTED.sub("'...'", problem))


def close_names(value: str, known: list[str], n: int = 3) -> list[str]:
    """The known names most like `value` (difflib), best first; case is ignored."""
    by_lower: dict[str, str] = {}
    for k in known:
        by_lower.setdefault(k.lower(), k)
    got = difflib.get_close_matches(value.lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[g] for g in got]


def unknown_name(kind: str, value: str, known: list[str], where: str = "models") -> str:
    """ "'x' is not a configured model; did you mean 'y'?" with the closest names, never the
    whole list when it is long."""
    close = close_names(value, known)
    msg = (
        f"{value!r} is not a configured {kind}"
        if where == "models"
        else (f"{value!r} is not one of {where}")
    )
    if close:
        return msg + "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    if len(known) <= 8:
        return msg + f"; the {kind}s are: {', '.join(known)}"
    return msg + f"; check the spelling ({len(known)} {kind}s are defined)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def mask(value: str | None) -> str:
    if not value:
        return ""
    return "****" + (value[-2:] if len(value) > 8 else "")


class Timeouts(_Strict):
    connect_s: float = Field(2.0, gt=0, description="TCP connect timeout")
    read_s: float = Field(60.0, gt=0, description="longest gap between two bytes")
    total_s: float = Field(300.0, gt=0, description="whole-attempt deadline")


class Pricing(_Strict):
    """USD prices. Either per-token (API models) or from hardware cost (local models).

    Local pricing: cost per output token = usd_per_hour / 3600 / tokens_per_second;
    input tokens are charged at `input_ratio` of that (prefill is much cheaper than decode).
    """

    input_per_mtok: float | None = Field(None, ge=0)
    cached_input_per_mtok: float | None = Field(None, ge=0)
    # prompt-cache writes (Anthropic's cache_creation_input_tokens); default: the input price
    cache_write_input_per_mtok: float | None = Field(None, ge=0)
    output_per_mtok: float | None = Field(None, ge=0)
    hardware_usd_per_hour: float | None = Field(None, ge=0)
    tokens_per_second: float | None = Field(None, gt=0)
    input_ratio: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _one_kind(self) -> Pricing:
        per_token = self.input_per_mtok is not None or self.output_per_mtok is not None
        hardware = self.hardware_usd_per_hour is not None or self.tokens_per_second is not None
        if per_token and hardware:
            raise ValueError(
                "give either input_per_mtok/output_per_mtok (API pricing) or "
                "hardware_usd_per_hour + tokens_per_second (local pricing), not both"
            )
        if hardware and (self.hardware_usd_per_hour is None or self.tokens_per_second is None):
            raise ValueError("local pricing needs both hardware_usd_per_hour and tokens_per_second")
        return self


class Endpoint(_Strict):
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1")
    model: str | None = Field(None, description="model name the upstream expects")
    api_key: str | None = None
    weight: int = Field(1, ge=1)
    # the API the upstream speaks: OpenAI's (chat/completions/embeddings), or Anthropic's
    # Messages API (POST {base_url}/messages with x-api-key and anthropic-version)
    api: Literal["openai", "anthropic"] = "openai"
    anthropic_version: str = Field("2023-06-01", description="api: anthropic: its version header")
    responses: bool = Field(
        False,
        description="the endpoint serves POST /responses itself (OpenAI's Responses API): "
        "/v1/responses requests are passed through to it, not translated to chat",
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(
                f"{v!r} must start with http:// or https:// and a host, such as "
                "http://127.0.0.1:8001/v1"
            )
        return v


# what a model's `kinds:` may list (responses is an endpoint's `responses: true`)
Kind = Literal["chat", "completions", "embeddings", "messages"]


class ModelConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    tier: Tier
    endpoints: list[Endpoint] = Field(min_length=1)
    profile: str | None = Field(None, description="router profile this model is scored as")
    pricing: Pricing | None = None
    timeouts: Timeouts = Timeouts()
    max_concurrency: int = Field(256, ge=1, description="in-flight requests per endpoint")
    max_queue: int = Field(512, ge=0, description="requests waiting for a slot per endpoint")
    queue_timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(2, ge=0, le=10, description="extra attempts on the same model")
    # what the model's upstream serves natively: chat, completions and embeddings
    # (OpenAI-style endpoints; a chat model also serves the API faces, /v1/responses and
    # /v1/messages, by translation), or messages (api: anthropic endpoints: the default there,
    # and all they serve); a route or `auto` skips a model for a request of a kind it does
    # not serve
    kinds: list[Kind] = Field(["chat", "completions"], min_length=1)
    # how long the provider keeps a prompt prefix cached (OpenAI and Anthropic: ~5 minutes):
    # conversation stickiness weighs a cached prefix by the chance it is still warm
    prompt_cache_ttl_s: float = Field(300.0, gt=0)
    # per-model limits for every key together (gateway/tenants/limits.py): token buckets
    # of this many requests / tokens a minute (bursts up to one minute's worth)
    rpm: int | None = Field(None, ge=1, description="requests per minute to this model")
    tpm: int | None = Field(None, ge=1, description="tokens per minute to this model")
    cache: bool = Field(False, description="cache deterministic answers asked of this name")

    @model_validator(mode="before")
    @classmethod
    def _anthropic_kinds(cls, data: Any) -> Any:
        """An api: anthropic model serves messages unless its kinds say otherwise."""
        if isinstance(data, dict) and "kinds" not in data:
            eps = data.get("endpoints")
            if (
                isinstance(eps, list)
                and eps
                and all(isinstance(e, dict) and e.get("api") == "anthropic" for e in eps)
            ):
                return {**data, "kinds": ["messages"]}
        return data

    @model_validator(mode="after")
    def _one_api(self) -> ModelConfig:
        apis = {ep.api for ep in self.endpoints}
        if len(apis) > 1:
            raise ValueError(
                "a model's endpoints must all speak one api (openai or anthropic); make one "
                "model per api and list both in a route"
            )
        if apis == {"anthropic"}:
            if self.kinds != ["messages"]:
                raise ValueError(
                    "kinds: an api: anthropic model serves only messages (/v1/messages); "
                    "leave kinds out or set kinds: [messages]"
                )
        elif "messages" in self.kinds:
            raise ValueError(
                "kinds: messages is for api: anthropic endpoints; an OpenAI-style chat model "
                "serves /v1/messages by translation (keep chat in kinds)"
            )
        return self


FACE_KINDS = frozenset({"messages", "responses"})  # kinds a chat model serves by translation
NATIVE, TRANSLATED = "native", "translated"


def serves(m: ModelConfig, kind: str) -> str | None:
    """How model `m` answers requests of `kind`: NATIVE (its `kinds:` lists it; responses:
    every endpoint has `responses: true`), TRANSLATED (an API face's kind, translated to chat
    for a model that serves chat), or None (it does not)."""
    if kind in m.kinds or (
        kind == "responses" and "chat" in m.kinds and all(ep.responses for ep in m.endpoints)
    ):
        return NATIVE
    if kind in FACE_KINDS and "chat" in m.kinds:
        return TRANSLATED
    return None


class RouteConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    models: list[str] = Field(min_length=1, description="model names in fallback order")
    reference: str | None = Field(None, description="baseline model for savings")
    cache: bool = Field(False, description="cache deterministic answers of this route")


class PolicyConfig(_Strict):
    kind: PolicyKind
    target: float | None = Field(None, description="cheapest_above: quality to reach")
    cost_weight: float | None = Field(None, description="max_utility: lambda (quality per USD)")
    threshold: float | None = Field(None, description="threshold: strong-win score cut")
    strong: str | None = None
    weak: str | None = None
    idle_local_free: bool = Field(
        False,
        description="price a locally priced model (hardware_usd_per_hour) at $0 for the "
        "decision while one of its endpoints has a free slot: its hardware is paid for anyway",
    )


class ExploreConfig(_Strict):
    """Exploration for `router train --from-store`: a share of routed requests goes to another
    candidate near the decision, and the record keeps the probability of the model chosen."""

    share: float = Field(
        0.0, ge=0, le=1, description="fraction of routed requests sent to another candidate"
    )
    margin: float = Field(
        0.05,
        ge=0,
        description="a candidate is eligible when its predicted quality (max_utility: its "
        "utility) is within this of the chosen model's",
    )
    routes: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        {}, description="share per routed model name (auto, router-<policy>-<value>)"
    )


class StickyConfig(_Strict):
    """Conversation stickiness (gateway/routing/sticky.py): the turns of one conversation
    (one session header value, else one leading message prefix; per gateway key) stay on the
    model and endpoint of the previous turn unless the router's expected saving from a switch
    is more than the cached prefix it would lose."""

    enabled: bool = True
    session_header: str = Field(
        "x-tollgate-session", description="a request header naming the conversation"
    )
    ttl_s: float = Field(3600.0, gt=0, description="a conversation not seen this long is forgotten")
    max_entries: int = Field(100_000, ge=1, description="memory backend: conversations kept (LRU)")
    backend: Literal["memory", "redis"] = Field(
        "memory", description="memory: each process its own map; redis: every replica shares it"
    )
    redis_url: str | None = Field(None, description="redis backend; None: store.redis_url")
    redis_cluster: bool | None = Field(
        None, description="redis_url is a Redis Cluster node; None: store.redis_cluster"
    )
    redis_timeout_s: float = Field(
        0.05, gt=0, description="a slower lookup counts as no previous turn"
    )

    @field_validator("session_header")
    @classmethod
    def _lower(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]+", v):
            raise ValueError(f"{v!r} is not an HTTP header name (letters, digits and -)")
        return v.lower()


class RouterConfig(_Strict):
    artifact: str = Field("default", description="'default' or a path to an artifact directory")
    default_policy: str = "balanced"
    candidates: list[str] | None = Field(None, description="models `auto` chooses among")
    policies: dict[str, PolicyConfig] = {
        "balanced": PolicyConfig(kind="cheapest_above", target=0.6),
    }
    fallback: Literal["next_tier_up", "route_order"] = "next_tier_up"
    explore: ExploreConfig = ExploreConfig()
    sticky: StickyConfig = StickyConfig()

    @model_validator(mode="after")
    def _explore_routes(self) -> RouterConfig:
        pol = self.policies
        routed = {"auto", *pol, *(f"auto:{p}" for p in pol)}
        bad = [n for n in self.explore.routes if n not in routed and not _ROUTED_RE.match(n)]
        if bad:
            raise ValueError(
                f"explore.routes: {', '.join(repr(n) for n in bad)} is not a routed model name: "
                "exploration applies to `auto`, `auto:<policy>`, a router.policies name and "
                "router-<policy kind>-<value> names (a route of `routes:` has no router decision "
                "to explore around)"
            )
        return self


class StoreConfig(_Strict):
    backend: Literal["sqlite", "redis", "postgres", "none"] = "sqlite"
    sqlite_path: str = "var/tollgate.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_stream_maxlen: int = Field(1_000_000, ge=1000)
    queue_size: int = Field(10_000, ge=10)
    batch_size: int = Field(32, ge=1)
    flush_interval_s: float = Field(0.25, gt=0)
    retry_interval_s: float = Field(1.0, gt=0)
    # each record on local disk before its response's last byte (gateway/accounting/journal.py)
    journal: bool = True
    journal_path: str | None = None  # default: <sqlite_path>.journal, or under var/ for Redis
    journal_max_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)
    redis_cluster: bool = Field(
        False, description="redis_url names one node of a Redis Cluster (a startup node)"
    )

    # PostgreSQL (backend "postgres"): a libpq URL or conninfo string; each replica keeps a
    # pool of postgres_pool_min..postgres_pool_max connections.
    postgres_url: str = "postgresql://postgres@127.0.0.1:5432/tollgate"
    postgres_pool_min: int = Field(1, ge=0)
    postgres_pool_max: int = Field(4, ge=1)
    postgres_timeout_s: float = Field(5.0, gt=0, description="connect and pool wait limit")
    retention_days: float | None = Field(
        None, gt=0, description="records older than this are deleted (hourly); None keeps all"
    )

    @model_validator(mode="after")
    def _cluster_db(self) -> StoreConfig:
        if self.redis_cluster and urlsplit(self.redis_url).path.strip("/") not in ("", "0"):
            raise ValueError(
                f"redis_url {urlsplit(self.redis_url).path!r}: a Redis Cluster has database 0 "
                "only; end redis_url with /0 (or no path) when redis_cluster is true"
            )
        return self


class JudgeConfig(_Strict):
    model: str | None = None
    sample_rate: float = Field(0.0, ge=0, le=1)
    rubric: str | None = None


class CircuitConfig(_Strict):
    failure_threshold: int = Field(5, ge=1)
    cooldown_s: float = Field(10.0, gt=0)


class ServerConfig(_Strict):
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    drain_timeout_s: float = Field(30.0, ge=0)
    retry_backoff_s: float = Field(0.1, ge=0, description="base of the jittered backoff")
    max_backoff_s: float = Field(5.0, ge=0)
    metrics_per_key: bool = False
    # /metrics stays bounded whatever names clients send: a label value is cut to this many
    # characters, and a metric keeps at most this many label combinations (later: "other")
    metrics_max_label_length: int = Field(100, ge=8, le=1000)
    metrics_max_series_per_metric: int = Field(1000, ge=10)
    max_upstream_response_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="an upstream answer (non-streamed, or an error body) over this is a 502",
    )
    max_sse_event_bytes: int = Field(
        1024 * 1024, ge=1024, description="a streamed event over this ends the stream"
    )
    # limits of the gateway's own HTTP/1.1 protocol (gateway/http/server.py), read at start
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="most bytes of a request line and headers, and of a chunked body's "
        "trailer fields (nginx's large buffers); more gets 431, a URL alone over it 414, and "
        "the connection is closed",
    )
    max_pipelined_requests: int = Field(
        16,
        ge=1,
        description="requests one connection may have waiting for their answers; past it the "
        "gateway reads nothing more from that connection and closes it after the last answer "
        "(the client sends the rest again, as HTTP/1.1 pipelining allows)",
    )
    max_connections: int = Field(
        4096,
        ge=1,
        description="open client connections per worker; one more gets 503 and is closed. "
        "Each takes a file descriptor (and one upstream connection while a request is in "
        "flight): keep it under half of `ulimit -n`",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's line and headers must arrive within this; else 408"
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="a request's body must arrive within this of its headers; else 408"
    )
    write_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a client that takes no answer bytes for this long (the socket's buffers "
        "full) is disconnected, which frees its upstream slot",
    )
    # /metrics answers only `Authorization: Bearer <metrics_token>` when set (from the env:
    # metrics_token: ${TOLLGATE_METRICS_TOKEN})
    metrics_token: str | None = None


class GatewayKey(_Strict):
    id: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    explore_share: float | None = Field(
        None, ge=0, le=1, description="overrides router.explore for this key's routed requests"
    )
    rpm: int | None = Field(None, ge=1, description="requests per minute for this key")
    tpm: int | None = Field(None, ge=1, description="tokens per minute for this key")
    budget_usd: float | None = Field(None, ge=0, description="spend per budget_window (USD)")
    budget_window: Literal["day", "week", "month"] = "month"
    models: list[str] | None = None
    budget_soft_share: float | None = Field(
        None,
        gt=0,
        le=1,
        description="past this share of budget_usd, `auto` routes thriftily "
        "(limits.budget_soft); overrides its share",
    )
    cache: bool = Field(False, description="cache this key's deterministic requests")


class BudgetSoftConfig(_Strict):
    """How a routed request (`auto`, router-<policy>-<value>) of a key past `share` of its
    budget is routed: without the `drop_top_tiers` most expensive tiers of the candidates,
    and with `policy` (a router.policies entry, e.g. max_utility with a high cost_weight)
    instead of the usual one when set."""

    share: float = Field(0.8, gt=0, le=1, description="share of the key's budget spent")
    drop_top_tiers: int = Field(1, ge=0, description="most expensive tiers left out")
    policy: str | None = Field(None, description="router.policies entry to route with")


class LimitsConfig(_Strict):
    """Where rate limits and budgets (gateway/tenants/limits.py) are counted: `local` is one
    memory-mapped file every worker process of this host shares (under a lock), `redis` one
    Redis every replica shares."""

    backend: Literal["local", "redis"] = "local"
    local_path: str = "var/tollgate-limits.bin"
    redis_url: str | None = Field(None, description="default: store.redis_url")
    redis_cluster: bool = False
    default_completion_tokens: int = Field(
        256, ge=0, description="completion tokens reserved when a request sets no max_tokens"
    )
    budget_soft: BudgetSoftConfig | None = Field(
        None, description="thrifty routing past a share of a key's budget (every routed name)"
    )
    budget_soft_routes: dict[str, BudgetSoftConfig] = Field(
        {}, description="the same per routed model name (auto, router-<policy>-<value>)"
    )


class AuthConfig(_Strict):
    keys: list[GatewayKey] = []
    # False only where running without gateway keys is meant (a laptop, a trusted network):
    # then requests without a key are served, and the side API is open
    required: bool = True
    # how often each replica reloads the keys created with `tollgate keys create` (and the
    # admin API) from the key store: a revoked key is refused everywhere within this
    refresh_interval_s: float = Field(1.0, gt=0, le=3600)
    # a dashboard sign-in lasts this long
    session_ttl_s: float = Field(12 * 3600.0, gt=0)
    # the secret that signs dashboard sessions when neither $TOLLGATE_SESSION_SECRET nor
    # $TOLLGATE_MASTER_KEY is set: made once (0600) and shared by every worker of the host
    # (relative to the current directory)
    session_secret_path: str = "var/tollgate-session.key"


class CacheConfig(_Strict):
    """The response cache (gateway/cache/): opt-in per route, model or key (`cache: true`)
    or per request (header `x-tollgate-cache: 1`); deterministic requests only."""

    enabled: bool = Field(True, description="false: no request is cached, whatever opts in")
    backend: Literal["memory", "redis"] = "memory"
    ttl_s: float = Field(3600.0, gt=0, description="an entry's lifetime")
    max_entries: int = Field(10_000, ge=1, description="memory backend: entries kept (LRU)")
    max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="memory backend: bytes kept (LRU)"
    )
    max_entry_bytes: int = Field(
        1024 * 1024, ge=256, description="an answer larger than this is not cached"
    )
    shared_across_keys: bool = Field(
        False, description="true: one key's cached answer may serve another key"
    )
    redis_url: str | None = Field(None, description="redis backend; None: store.redis_url")
    redis_timeout_s: float = Field(0.25, gt=0, description="a slower Redis lookup counts as a miss")


class ResponsesConfig(_Strict):
    """POST /v1/responses: whether answers are kept for `previous_response_id` and
    GET/DELETE /v1/responses/{id} (off unless set), and the bounds of what is kept."""

    store: bool = Field(
        False,
        description="true: keep each answer (unless the request says store: false) so that "
        "previous_response_id can continue it and GET/DELETE /v1/responses/{id} reach it",
    )
    sqlite_path: str | None = Field(
        None, description="the SQLite file; default: store.sqlite_path with .responses.db"
    )
    retention_days: float = Field(30.0, gt=0, description="a kept answer is deleted after this")
    max_entries: int = Field(100_000, ge=1, description="answers kept; the oldest go first")
    max_bytes: int = Field(
        512 * 1024 * 1024, ge=64 * 1024, description="bytes kept; the oldest answers go first"
    )
    max_entry_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="a conversation larger than this is not kept (its answer says so)",
    )


class UtilisationConfig(_Strict):
    """How busy each locally priced model is, and what its tokens really cost
    (gateway/accounting/utilisation.py)."""

    window_s: float = Field(
        3600.0,
        ge=1.0,
        le=7 * 86400.0,
        description="sliding window (seconds) of busy share and tokens served: the effective "
        "cost is the hardware's price over this window divided by the tokens it served",
    )


class RoutingConfig(_Strict):
    version: Literal[1] = 1
    server: ServerConfig = ServerConfig()
    circuit_breaker: CircuitConfig = CircuitConfig()
    store: StoreConfig = StoreConfig()
    router: RouterConfig = RouterConfig()
    judge: JudgeConfig = JudgeConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    cache: CacheConfig = CacheConfig()
    responses: ResponsesConfig = ResponsesConfig()
    utilisation: UtilisationConfig = UtilisationConfig()
    models: Annotated[list[ModelConfig], Field(min_length=1)]
    routes: list[RouteConfig] = []

    @model_validator(mode="after")
    def _references(self) -> RoutingConfig:
        problems: list[str] = []
        first: dict[str, int] = {}
        for i, m in enumerate(self.models):
            if m.name in first:
                problems.append(
                    f"models[{i}].name: {m.name!r} is already the name of models[{first[m.name]}]; "
                    "model names must be unique, rename one of them"
                )
            first.setdefault(m.name, i)
        known = list(first)
        for i, r in enumerate(self.routes):
            if r.name in first:
                problems.append(
                    f"routes[{i}].name: {r.name!r} is also the name of models[{first[r.name]}]; "
                    "rename the route or the model"
                )
            for k, member in enumerate(r.models):
                if member not in first:
                    problems.append(
                        f"routes[{i}].models[{k}]: {unknown_name('model', member, known)}"
                    )
            if r.reference and r.reference not in first:
                problems.append(
                    f"routes[{i}].reference: {unknown_name('model', r.reference, known)}"
                )
        pol = self.router.policies
        if self.router.default_policy not in pol:
            problems.append(
                "router.default_policy: "
                + unknown_name("policy", self.router.default_policy, list(pol), "router.policies")
            )
        for i, cand in enumerate(self.router.candidates or []):
            if cand not in first:
                problems.append(f"router.candidates[{i}]: {unknown_name('model', cand, known)}")
        soft = [self.limits.budget_soft, *self.limits.budget_soft_routes.values()]
        for b in soft:
            if b is not None and b.policy is not None and b.policy not in pol:
                problems.append(
                    "limits.budget_soft.policy: "
                    + unknown_name("policy", b.policy, list(pol), "router.policies")
                )
        if self.judge.model and self.judge.model not in first:
            problems.append(f"judge.model: {unknown_name('model', self.judge.model, known)}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # Convenience lookups; the config is frozen so these are cheap and safe.
    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None


def _expand_env(value: Any, path: str, problems: list[str]) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            got = os.environ.get(var)
            if got is None or (got == "" and default is not None):
                if default is None:
                    problems.append(
                        f"{path}: environment variable {var} is not set; set it or write "
                        f"${{{var}:-default}} to give a default"
                    )
                    return ""
                return default
            return got

        return _ENV_RE.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: _expand_env(v, f"{path}.{k}" if path else str(k), problems) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in ("function-after", "function-before"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _yaml_problem(e: yaml.YAMLError, path: str, text: str) -> tuple[str, str]:
    """(`path, line L, column C: not valid YAML: <what>`, the same without the line's text)
    (PyYAML names a string it parsed `"<unicode string>"`; an operator needs the file, the
    line and the column)."""
    lines = text.splitlines()

    def at(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        mark = e.problem_mark
        what = e.problem or "invalid YAML"
        if e.context:
            ctx_mark = e.context_mark
            where = f" that starts at {at(ctx_mark)}" if ctx_mark is not None else ""
            what += f" ({e.context}{where})"
        what = mask_keys(what)
        shown = mask_keys(lines[mark.line].strip()) if mark.line < len(lines) else ""
        line_text = f"; the line reads {shown!r}" if shown else ""
        fix = (
            "check the indentation and the `key: value` layout there (quote values that "
            "contain ': ' or '#')"
        )
        where = f"{path}, {at(mark)}: not valid YAML: "
        return f"{where}{what}{line_text}; {fix}", f"{where}{_public(what)}; {fix}"
    if isinstance(e, yaml.reader.ReaderError):
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        msg = (
            f"{path}, line {line}, column {column}: not valid YAML: character "
            f"{chr(e.character)!r} is not allowed in YAML; remove it"
        )
        return msg, msg
    return f"{path}: not valid YAML: " + mask_keys(str(e)).replace(
        '"<unicode string>"', path
    ), f"{path}: not valid YAML ({type(e).__name__})"


def _yaml_kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return "scalar"


def _shown(value: Any) -> str | None:
    if isinstance(value, str):
        return repr(mask_keys(value if len(value) <= 60 else value[:57] + "..."))
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return None


def _field_names(loc: tuple[int | str, ...]) -> list[str]:
    """The field names allowed in the object at `loc` of the routing file (for suggestions)."""
    model: Any = RoutingConfig
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = field.annotation
        while get_args(model) and not (isinstance(model, type) and issubclass(model, BaseModel)):
            args = [a for a in get_args(model) if a is not type(None)]
            model = args[-1] if args else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _pydantic_problems(e: ValidationError) -> list[str]:
    problems: list[str] = []
    for err in e.errors():
        loc = tuple(err["loc"])
        where = _loc(loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            name = str(loc[-1]) if loc else ""
            close = close_names(name, _field_names(loc[:-1]))
            hint = (
                "did you mean " + " or ".join(repr(c) for c in close) + "?"
                if close
                else "check its spelling against the file `tollgate init` writes"
            )
            problems.append(f"{where}: unknown field {name!r}; {hint}")
            continue
        if err["type"] == "missing":
            problems.append(f"{where}: required field is missing; add it")
            continue
        if err["type"] == "string_pattern_mismatch" and loc and loc[-1] == "name":
            problems.append(
                f"{where}: {_shown(err.get('input'))} is not a usable name; use letters, digits "
                "and . _ : / - (no spaces), starting with a letter or digit"
            )
            continue
        if err["type"] == "value_error" and where == "(top level)":
            problems.extend(msg.splitlines())  # cross-references, each with its own path
            continue
        shown = _shown(err.get("input")) if err["type"] != "value_error" else None
        if shown is not None:
            msg += f", got {shown}"
        problems.append(f"{where}: {msg}")
    return problems


def parse_config(text: str, path: str = "<string>") -> RoutingConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        full, public = _yaml_problem(e, path, text)
        raise ConfigError(path, [full], [public]) from None
    if not isinstance(raw, dict):
        got = "it is empty" if raw is None else f"it holds a YAML {_yaml_kind(raw)}"
        raise ConfigError(
            path,
            [
                f"the file must be a YAML mapping with at least a `models:` list, but {got}; "
                "start from the file `tollgate init` writes"
            ],
        )
    problems: list[str] = []
    raw = _expand_env(raw, "", problems)
    if problems:
        raise ConfigError(path, problems)
    try:
        return RoutingConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(path, [mask_keys(p) for p in _pydantic_problems(e)]) from None


@dataclass(frozen=True)
class ConfigSource:
    """The routing file a command reads and why that one; `str()` is the line it prints."""

    path: Path  # absolute
    origin: str

    def __str__(self) -> str:
        return f"config: {self.path} ({self.origin})"


def find_config(explicit: str | os.PathLike[str] | None = None) -> ConfigSource:
    """`--config` > $TOLLGATE_CONFIG > ./tollgate.yaml > the packaged default.

    Relative paths inside the file (store.sqlite_path, router.artifact) are relative to the
    current directory, whichever file it is."""
    if explicit:
        return ConfigSource(Path(explicit).absolute(), "from --config")
    env = os.environ.get("TOLLGATE_CONFIG")
    if env:
        return ConfigSource(Path(env).absolute(), "from $TOLLGATE_CONFIG")
    local = Path(LOCAL_CONFIG_NAME)
    if local.is_file():
        return ConfigSource(local.absolute(), f"./{LOCAL_CONFIG_NAME} in the current directory")
    return ConfigSource(DEFAULT_CONFIG_PATH, "the packaged default")


def load_config(path: str | os.PathLike[str] | None = None) -> RoutingConfig:
    p = Path(path) if path else DEFAULT_CONFIG_PATH
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(str(p), [f"cannot read the file: {e.strerror}"]) from None
    return parse_config(text, str(p))


def masked_dump(cfg: RoutingConfig) -> dict[str, Any]:
    """The resolved config as plain data with every secret masked."""
    data = cfg.model_dump(mode="json")
    for m in data["models"]:
        for ep in m["endpoints"]:
            if ep.get("api_key"):
                ep["api_key"] = mask(ep["api_key"])
    if data["server"].get("metrics_token"):
        data["server"]["metrics_token"] = mask(data["server"]["metrics_token"])
    # every URL that may carry a password: the store's Redis and PostgreSQL, the limits' and
    # the cache's own Redis
    for section, field in (
        ("store", "redis_url"),
        ("store", "postgres_url"),
        ("limits", "redis_url"),
        ("cache", "redis_url"),
    ):
        url = data.get(section, {}).get(field)
        if url:
            data[section][field] = mask_url_password(url)
    return data


def mask_url_password(url: str) -> str:
    """A store URL (or libpq conninfo string) with its password replaced by ****."""
    url = re.sub(r"//[^@/]*@", "//****@", url)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1****", url)
