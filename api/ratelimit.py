"""Request rate limits: a token bucket per API key (`DISTILLERY_RATE_LIMIT_PER_MINUTE`, or the
project's `rate_limit_per_minute` quota).

A bucket holds up to one minute's requests and refills continuously at the limit's rate, so a
client may burst a minute's worth and then goes at the limit. A request finding the bucket
empty is a 429 whose `Retry-After` says when the next token comes.

With a Redis broker (production) the buckets live in Redis, shared by every API process: one
Lua script reads, refills and takes a token atomically. With the embedded filesystem broker
(`distill serve`: one API process) they live in this process. When Redis cannot be reached
the request is let through (logged): an outage of the limiter must not become an outage of the
API, whose database is the source of truth.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Protocol

from store.settings import Settings

log = logging.getLogger("distillery.api")

# KEYS[1] the bucket; ARGV: capacity, refill per second, now (seconds). Returns the seconds to
# wait before a token is there (0: taken), as a string (a Lua number would be truncated).
TOKEN_BUCKET = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = capacity
  at = now
end
if now > at then
  tokens = math.min(capacity, tokens + (now - at) * rate)
  at = now
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 60)
return tostring(wait)
"""


class RateLimiter(Protocol):
    def acquire(self, bucket: str, per_minute: int, now: float) -> float:
        """Take a token from `bucket`; 0 when one was there, else the seconds until one is."""
        ...


def _refill(tokens: float, at: float, capacity: float, rate: float, now: float) -> float:
    return min(capacity, tokens + max(0.0, now - at) * rate)


class LocalLimiter:
    """Buckets in this process (the embedded mode's single API process)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, bucket: str, per_minute: int, now: float) -> float:
        capacity, rate = float(per_minute), per_minute / 60.0
        with self._lock:
            tokens, at = self._buckets.get(bucket, (capacity, now))
            tokens = _refill(tokens, at, capacity, rate, now)
            at = max(at, now)
            if tokens >= 1:
                self._buckets[bucket] = (tokens - 1, at)
                return 0.0
            self._buckets[bucket] = (tokens, at)
            return (1 - tokens) / rate


class RedisLimiter:
    """Buckets in Redis, under `<prefix>:<bucket>`, shared by all API processes."""

    def __init__(self, url: str, prefix: str):
        import redis

        self.client: Any = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.prefix = prefix
        self.script: Any = self.client.register_script(TOKEN_BUCKET)

    def acquire(self, bucket: str, per_minute: int, now: float) -> float:
        try:
            wait = self.script(
                keys=[f"{self.prefix}:{bucket}"], args=[per_minute, per_minute / 60.0, now]
            )
        except Exception as exc:  # Redis down or slow: let the request through
            log.warning("rate limiter unavailable (%s: %s); not limiting", type(exc).__name__, exc)
            return 0.0
        return float(wait)


def make_limiter(settings: Settings) -> RateLimiter:
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://")):
        return RedisLimiter(url, f"{settings.queue}:ratelimit")
    return LocalLimiter()


def retry_after(wait: float) -> int:
    """Whole seconds for a Retry-After header: never 0 (that would invite an instant retry)."""
    return max(1, math.ceil(wait))
