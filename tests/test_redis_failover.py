"""A Sentinel failover while the product runs: the master dies, the Sentinel promotes its replica, and the
cache, beat's lock and the broker that a running web, worker or beat process already holds carry on
against the new master, without being built again.

Runs its own master, replica and Sentinel on free loopback ports (never the Redis at 6379).
"""
from __future__ import annotations

import pickle
import shutil
import subprocess
import time
import uuid

import pytest
import redis
from django.core.cache.backends.redis import RedisCache
from kombu import Connection

from config import beat, redis_sentinel
from config.celery import app
from config.settings import _cache
from tests.test_redis_sentinel import _free_port

MASTER_NAME = "gradesync-failover"
DOWN_AFTER_MS = 500  # the Sentinel calls the master down this soon
PROMOTION_DEADLINE_SECONDS = 20

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="no redis-server binary")


def _wait_for(condition, what: str, seconds: float = 10):
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except redis.ConnectionError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.05)


class Topology:
    """A master, its replica and one Sentinel (quorum 1), as subprocesses."""

    def __init__(self, folder):
        self.folder = folder
        self.processes: dict[str, subprocess.Popen] = {}
        self.master_port, self.replica_port, self.sentinel_port = _free_port(), _free_port(), _free_port()

    def _start(self, role: str, *args: str) -> None:
        self.processes[role] = subprocess.Popen(
            ["redis-server", *args], cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        # No persistence; a replica is synced at once (Redis 7 waits 5 s for more replicas by default).
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        self._start("master", "--port", str(self.master_port), *common)
        _wait_for(lambda: self.redis(self.master_port).ping(), "the master to start")
        self._start("replica", "--port", str(self.replica_port), *common, "--replicaof", "127.0.0.1", str(self.master_port))
        _wait_for(lambda: self.redis(self.replica_port).info("replication")["master_link_status"] == "up",
                  "the replica to sync")
        config = self.folder / "sentinel.conf"  # the Sentinel rewrites its own configuration
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.folder}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 5000\n")
        self._start("sentinel", str(config), "--sentinel")
        # Promotion needs a replica the Sentinel knows of (learnt from the master's INFO).
        _wait_for(lambda: any(replica["port"] == self.replica_port
                              for replica in self.sentinel().sentinel_slaves(MASTER_NAME)), "the Sentinel to see the replica")

    def stop(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait()

    @staticmethod
    def redis(port: int, db: int = 0) -> redis.Redis:
        return redis.Redis(port=port, db=db, socket_timeout=2, socket_connect_timeout=2)

    def sentinel(self) -> redis.Redis:
        return self.redis(self.sentinel_port)

    def url(self, db: int) -> str:
        return f"sentinel://127.0.0.1:{self.sentinel_port}/{db}"

    def kill_master_and_wait_for_promotion(self) -> None:
        # All written so far is on the replica before the master dies.
        assert self.redis(self.master_port).wait(1, 2000) == 1
        self.processes["master"].kill()
        self.processes["master"].wait()
        sentinel = self.sentinel()
        _wait_for(lambda: sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)[1] == self.replica_port,
                  "the Sentinel to promote the replica", PROMOTION_DEADLINE_SECONDS)
        # GET-MASTER-ADDR-BY-NAME names the promoted replica while the failover still runs; redis-py (and so
        # kombu) asks SENTINEL MASTERS, which names the dead master until the failover ends, a moment later.
        _wait_for(lambda: sentinel.sentinel_master(MASTER_NAME)["port"] == self.replica_port,
                  "the Sentinel to finish the failover", PROMOTION_DEADLINE_SECONDS)


@pytest.fixture
def topology(tmp_path, monkeypatch):
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", MASTER_NAME)
    topology = Topology(tmp_path)
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


def test_after_the_master_dies_the_grade_cache_beat_lock_and_broker_carry_on_against_the_promoted_replica(
        topology, tmp_path, monkeypatch):
    # The shared cache as settings builds it for a sentinel:// CACHE_URL (SentinelPool as its pool class).
    cache_settings = _cache(topology.url(1))
    cache = RedisCache(cache_settings["LOCATION"], cache_settings)
    # Beat's leader lock, its client from the broker's URL (config.beat). Celery prefers the environment's
    # CELERY_BROKER_URL to its configuration: set there, or the lock would be taken in the test run's Redis.
    monkeypatch.setenv("CELERY_BROKER_URL", topology.url(0))
    scheduler = beat.LeaderScheduler(app=app, schedule_filename=str(tmp_path / "beat-schedule"))
    assert isinstance(scheduler.redis.connection_pool, redis_sentinel.SentinelPool)
    # The broker as Celery opens it (settings.py's transport options for a sentinel:// broker).
    broker = Connection(topology.url(0),
                        transport_options={"visibility_timeout": 3600, "master_name": redis_sentinel.master_name()})
    deliveries = broker.SimpleQueue(f"failover-deliveries-{uuid.uuid4().hex}")
    try:
        # Before: every path has a connection open to the master.
        cache.set("ags-token", "issued before", 300)
        assert cache.get("ags-token") == "issued before"
        assert scheduler.is_leader()
        deliveries.put({"delivery": 1})
        message = deliveries.get(timeout=5)  # a consumer too, on a connection of its own, as a worker has
        assert message.payload == {"delivery": 1}
        message.ack()
        deliveries.put({"delivery": 2})  # still queued when the master dies

        topology.kill_master_and_wait_for_promotion()

        # The same objects, not rebuilt: what a running web, worker or beat process holds.
        assert cache.get("ags-token") == "issued before", "the token cached before the failover is still there"
        cache.set("ags-token", "issued after", 300)
        assert cache.get("ags-token") == "issued after"
        stored = topology.redis(topology.replica_port, db=1).get(cache.make_and_validate_key("ags-token"))
        assert pickle.loads(stored) == "issued after", "written to the promoted replica"

        assert scheduler.is_leader(), "the scheduling beat keeps its lock (is_leader is False when Redis fails)"
        assert topology.redis(topology.replica_port).get(beat.LEADER_KEY).decode() == scheduler.identity

        deliveries.put({"delivery": 3})
        received, connection_lost = [], 0
        while len(received) < 2:
            try:
                message = deliveries.get(timeout=5)
            except broker.connection_errors:
                # The consumer's own connection was to the dead master, outside the pool that checks a
                # connection before lending it: its first read fails once (a worker logs "Connection to
                # broker lost" and reconnects); the next one asks the Sentinel afresh.
                connection_lost += 1
                assert connection_lost == 1, "the consumer does not recover from the failover"
                continue
            received.append(message.payload["delivery"])
            message.ack()
        assert received == [2, 3], "no delivery is lost: the one queued before the failover comes first"
    finally:
        deliveries.close()
        broker.release()
        scheduler.close()
