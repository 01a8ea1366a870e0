"""The request record: one per request, schema-versioned, written to the metrics store."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# 2: router_features; 3: SQLite keeps them as float32 bytes; 4: purpose (client | judge),
# propensity and explored (router.explore); 5: budget_soft; 6: cache_write_tokens;
# 7: max_cost_usd and min_quality (the client's limits), sticky (conversation stickiness)
SCHEMA_VERSION = 7
CLIENT = "client"  # a request a client sent through the gateway
JUDGE = "judge"  # the sampled judge's own grading call (gateway/accounting/quality.py)
# the error_type of a request the gateway's own limits refused (gateway/tenants/limits.py):
# the error code its client got, over a key's or model's rpm/tpm, or over a key's budget
RATE_LIMITED, OVER_BUDGET = "rate_limit_exceeded", "insufficient_quota"
LIMIT_REJECTED = (RATE_LIMITED, OVER_BUDGET)


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    ts: float  # unix seconds when the request arrived
    endpoint: str = "chat"  # chat | completions | embeddings
    key_id: str | None = None  # id of the gateway key (never the key itself)
    route: str | None = None  # the model name the client asked for (virtual or concrete)
    policy: str | None = None  # router policy when the route was routed
    model: str | None = None  # public name of the model that answered (or last tried)
    tier: str | None = None
    router_score: float | None = None  # RouteLLM-style need-for-strong score
    router_scores: dict[str, float] | None = None  # predicted quality per candidate model
    # the router's prompt vector (32 numbers, no text): what `tollgate router train
    # --from-store` fits model profiles on, from the judge and feedback scores
    router_features: list[float] | None = None
    # P(the routing policy picked the model that served), under the exploring policy of
    # gateway/routing/explore.py: 1.0 for a routed request when exploration is off, 1 - share
    # for the router's own choice, share / k for an explored alternative. None when the
    # router did not run, when a fallback served (not the policy's pick), and in records
    # written before schema 4. Training weights a scored record by 1 / propensity.
    propensity: float | None = None
    explored: bool = False  # the request went to an alternative, not the router's choice
    # the key was past its budget's soft share (limits.budget_soft): routed thriftily, without
    # the most expensive tiers or with the thrifty policy (False in records before schema 5)
    budget_soft: bool = False
    # the client's per-request limits (headers x-tollgate-max-cost-usd, x-tollgate-min-quality);
    # None when not sent (and in records before schema 6)
    max_cost_usd: float | None = None
    min_quality: float | None = None
    # conversation stickiness (gateway/routing/sticky.py), for a routed request that belongs to
    # a conversation: "new" (its first turn seen), "stayed" (the router chose the model of the
    # previous turn anyway), "kept" (kept on that model: a switch would have lost more cached
    # prefix than it saves), "switched" (the switch saves more); None otherwise
    sticky: str | None = None
    attempts: int = 0
    fallbacks: int = 0
    status: int = 200
    error_type: str | None = None
    stream: bool = False
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt-cache reads among the prompt tokens
    cache_write_tokens: int = 0  # prompt-cache writes among them (Anthropic's cache creation)
    completion_tokens: int = 0
    tokens_estimated: bool = False
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0
    baseline_model: str | None = None
    latency_ms: float = 0.0  # total, as the client saw it
    ttft_ms: float | None = None  # time to first token (streams) / first byte
    upstream_ms: float = 0.0
    overhead_ms: float = 0.0  # latency minus upstream time
    cache_hit: bool = False
    quality_predicted: float | None = None
    quality_feedback: float | None = None
    quality_judge: float | None = None
    # whose call this was: CLIENT traffic, or the JUDGE's own call, priced and recorded like
    # any other but counted as judge spend, never in client usage (records before schema 4
    # are all client traffic)
    purpose: str = CLIENT
    schema_version: int = field(default=SCHEMA_VERSION)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def savings_usd(self) -> float:
        return self.baseline_cost_usd - self.cost_usd
