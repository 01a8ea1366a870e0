"""The sampled LLM judge: grades a fraction of answers in the background and records the score.

The rubric asks the judge model for "Score: N" with N from 1 to 10; the recorded quality is
(N - 1) / 9, so 1 -> 0.0 and 10 -> 1.0. Judging never touches the request path: maybe_judge()
only samples and schedules. At most `max_concurrent` judge calls run at once and at most
`max_pending` wait; beyond that a sample is skipped (counted as judge error kind "busy").
The gateway's `call` sends the judge's request the way client traffic goes (every endpoint,
circuit breakers, retries; an open circuit is judge error kind "unavailable") and records
it, priced, as the judge's own spend (RequestRecord.purpose "judge").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.accounting.metrics import Metrics
from gateway.accounting.recorder import Recorder
from gateway.accounting.records import RequestRecord
from gateway.config import JudgeConfig
from gateway.errors import Unavailable

log = logging.getLogger("tollgate.judge")

DEFAULT_RUBRIC = """You are grading an AI assistant's answer to a user's request.
Judge helpfulness, correctness, relevance and completeness; penalise factual errors,
refusals of harmless requests and answers that ignore the question. Length is not a merit.
Think briefly, then end with a line of exactly this form:
Score: N
where N is an integer from 1 (useless or wrong) to 10 (excellent)."""

_MAX_CHARS = 12_000  # of the conversation and of the answer each, so judge calls stay bounded
_SCORE_RE = re.compile(r"score\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?", re.IGNORECASE)
_RATIO_RE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*10\b")
_BARE_RE = re.compile(r"^\s*\**\s*(\d+(?:\.\d+)?)\s*\**\s*\.?\s*$")


def parse_score(text: str) -> float | None:
    """The judge's 1-10 grade mapped to [0, 1], or None when there is none.

    Tries the last "Score: N" (also "score = N", "**Score:** 8/10"), then the last "N/10",
    then a reply that is only a number. Values outside 1..10 are rejected.
    """
    for pattern in (_SCORE_RE, _RATIO_RE):
        found = pattern.findall(text)
        if found:
            return _to_unit(float(found[-1]))
    m = _BARE_RE.match(text)
    return _to_unit(float(m.group(1))) if m else None


def _to_unit(n: float) -> float | None:
    if not 1.0 <= n <= 10.0:
        return None
    return (n - 1.0) / 9.0


def _clip(text: str) -> str:
    return (
        text
        if len(text) <= _MAX_CHARS
        else text[: _MAX_CHARS // 2] + "\n[...]\n" + text[-_MAX_CHARS // 2 :]
    )


def _conversation(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    lines = []
    for m in messages if isinstance(messages, list) else []:
        if isinstance(m, dict):
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            lines.append(f"{m.get('role', 'user')}: {content or ''}")
        elif isinstance(m, str):
            lines.append(m)
    return "\n".join(lines)


def rubric_messages(rubric: str | None, messages: Any, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": rubric or DEFAULT_RUBRIC},
        {
            "role": "user",
            "content": "[Conversation]\n"
            + _clip(_conversation(messages))
            + "\n\n[Answer to grade]\n"
            + _clip(answer)
            + "\n\nGrade the answer. End with `Score: N`.",
        },
    ]


class Judge:
    def __init__(
        self,
        cfg: JudgeConfig,
        call: Callable[[list[dict[str, Any]]], Awaitable[str]],
        recorder: Recorder,
        metrics: Metrics,
        max_concurrent: int = 4,
        max_pending: int = 64,
        timeout_s: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.call = call
        self.recorder = recorder
        self.metrics = metrics
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self._sem = asyncio.Semaphore(max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = rng or random.Random()
        self.judged = 0
        self.failed = 0

    def update(self, cfg: JudgeConfig) -> None:
        """Take a reloaded judge config (model, rubric, sample rate)."""
        self.cfg = cfg

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.model) and self.cfg.sample_rate > 0

    def maybe_judge(self, record: RequestRecord, messages: Any, answer_text: str) -> bool:
        """Sample and schedule a background grading; True when scheduled. Never raises."""
        try:
            if not self.enabled or not answer_text or record.status >= 400:
                return False
            if self._rng.random() >= self.cfg.sample_rate:
                return False
            if len(self._tasks) >= self.max_pending:
                self._fail("busy")
                return False
            task = asyncio.get_running_loop().create_task(
                self._grade(record.request_id, record.model, messages, answer_text)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        except Exception:
            log.exception("judge scheduling failed")
            return False

    def _fail(self, kind: str) -> None:
        self.failed += 1
        self.metrics.judge_error(kind)

    async def _grade(self, request_id: str, model: str | None, messages: Any, answer: str) -> None:
        async with self._sem:
            try:
                text = await asyncio.wait_for(
                    self.call(rubric_messages(self.cfg.rubric, messages, answer)), self.timeout_s
                )
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                self._fail("timeout")
                return
            except Unavailable as e:  # open circuits or a full queue on the judge model
                log.warning("judge call skipped for %s: %s", request_id, e)
                self._fail("unavailable")
                return
            except Exception as e:
                log.warning("judge call failed for %s: %s", request_id, e)
                self._fail("call")
                return
        score = parse_score(text or "")
        if score is None:
            log.warning("judge gave no parsable score for %s: %r", request_id, (text or "")[:200])
            self._fail("unparsable")
            return
        try:
            await self.recorder.attach_quality(request_id, "judge", score)
        except Exception as e:
            log.warning("judge score for %s not recorded: %s", request_id, e)
            self._fail("record")
            return
        self.judged += 1
        self.metrics.quality(model, "judge", score)

    async def drain(self) -> None:
        """Wait for the judge calls already scheduled (tests, graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self, timeout: float = 5.0) -> None:
        """Give running judge calls `timeout` s to finish, then cancel the rest."""
        if not self._tasks:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), timeout)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
