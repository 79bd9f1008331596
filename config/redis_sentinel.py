"""Redis behind Sentinel, the way production runs it: CELERY_BROKER_URL and CACHE_URL may name the
Sentinels instead of one Redis, in Celery's own form — `sentinel://[:password@]host:26379;sentinel://host2:26379/1`
— with the master's name in REDIS_SENTINEL_MASTER. Every connection then asks the Sentinels which
Redis is the master, and follows a failover.

Celery's broker reads the URL itself (master_name in its transport options, settings.py). Django's
Redis cache gets `SentinelPool` as its pool class, and beat's lock (config.beat) a client through `client`.
"""
from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

SCHEME = "sentinel://"
SOCKET_TIMEOUT_SECONDS = 5


def is_sentinel(url: str) -> bool:
    return str(url).startswith(SCHEME)


def master_name() -> str:
    return os.environ.get("REDIS_SENTINEL_MASTER", "mymaster")


def parse(url: str) -> tuple[list[tuple[str, int]], int, str | None]:
    """The Sentinels' addresses, the database number and the password of a sentinel:// URL."""
    sentinels, db, password = [], 0, None
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ValueError(f"not a sentinel:// address: {part!r} (expected sentinel://host:26379)")
        sentinels.append((parts.hostname, parts.port or 26379))
        if parts.path.strip("/"):
            db = int(parts.path.strip("/"))
        if parts.password:
            password = unquote(parts.password)
    return sentinels, db, password


class SentinelPool(SentinelConnectionPool):
    """A connection pool to the master that the Sentinels name (Django's RedisCache `pool_class`)."""

    @classmethod
    def from_url(cls, url: str, **options) -> SentinelPool:
        sentinels, db, password = parse(url)
        timeouts = {"socket_timeout": SOCKET_TIMEOUT_SECONDS, "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS}
        # The URL's password is the master's (as in Celery); the Sentinels themselves take none.
        manager = Sentinel(sentinels, sentinel_kwargs=timeouts)
        return cls(master_name(), manager, db=db, password=password, **timeouts, **options)


def client(url: str) -> redis.Redis:
    """A Redis client for a redis://, rediss:// or sentinel:// URL."""
    if is_sentinel(url):
        return redis.Redis(connection_pool=SentinelPool.from_url(url))
    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_SECONDS, socket_connect_timeout=SOCKET_TIMEOUT_SECONDS)
