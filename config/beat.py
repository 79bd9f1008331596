"""Beat on several hosts, one scheduling at a time: `celery -A config beat --scheduler config.beat:LeaderScheduler`
(`make beat`). Each beat takes or renews a lock in Redis (a key with a TTL, holding its identity) before
each tick; the others wait and try again every few seconds. When the scheduling host dies, its lock
lapses within LEADER_TTL_SECONDS and a standby takes over: the sweeper, the resync watchdog and the
rollup keep running. Without Redis (make run's folder broker) there is one beat, and it schedules.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid

from celery.beat import PersistentScheduler

from config import redis_sentinel

logger = logging.getLogger(__name__)

LEADER_KEY = "celery-beat-leader"
LEADER_TTL_SECONDS = 30  # a dead leader's lock lapses this soon
STANDBY_RETRY_SECONDS = 5.0  # a standby tries to take the lock this often; the leader renews as often

# Take the lock if it is free, or extend it if it is ours; one round trip, atomic.
_TAKE_OR_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
# Let go of the lock only if it is still ours.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


_REDIS_SCHEMES = ("redis://", "rediss://", redis_sentinel.SCHEME)


def _redis_for(app):
    """The broker's Redis (or the shared cache's), or None."""
    url = str(app.conf.broker_url or "")
    if not url.startswith(_REDIS_SCHEMES):
        from django.conf import settings

        location = settings.CACHES["default"].get("LOCATION") or ""
        url = str(location[0] if isinstance(location, list) else location)
        if not url.startswith(_REDIS_SCHEMES):
            return None
    return redis_sentinel.client(url)


class LeaderScheduler(PersistentScheduler):
    """A PersistentScheduler that schedules only while it holds the beat lock."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.redis = _redis_for(self.app)
        self.leading: bool | None = True if self.redis is None else None  # None: not known yet (logged when it is)
        self._take_or_renew = self.redis.register_script(_TAKE_OR_RENEW) if self.redis is not None else None
        self._release = self.redis.register_script(_RELEASE) if self.redis is not None else None

    def is_leader(self) -> bool:
        if self.redis is None:
            return True
        try:
            leading = bool(self._take_or_renew(keys=[LEADER_KEY], args=[self.identity, int(LEADER_TTL_SECONDS * 1000)]))
        except Exception as error:  # noqa: BLE001 — Redis away: schedule nothing rather than twice
            logger.warning("beat: cannot reach Redis for the leader lock (%s); not scheduling", error)
            leading = False
        if leading != self.leading:
            logger.warning("beat %s: %s", self.identity, "now scheduling (leader)" if leading else "standing by (another beat schedules)")
            self.leading = leading
        return leading

    def tick(self, *args, **kwargs) -> float:
        if not self.is_leader():
            return STANDBY_RETRY_SECONDS
        return min(super().tick(*args, **kwargs), STANDBY_RETRY_SECONDS)

    def close(self) -> None:
        if self.redis is not None and self.leading:
            try:
                self._release(keys=[LEADER_KEY], args=[self.identity])  # a standby takes over at once
            except Exception:  # noqa: BLE001 — it lapses by itself
                pass
        super().close()
