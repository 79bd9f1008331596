"""Redis Sentinel URLs for the broker and the cache, against a real Sentinel watching this machine's Redis."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import pytest
import redis
from django.core.cache.backends.redis import RedisCache
from kombu import Connection

from config import redis_sentinel

REDIS_PORT = 6379


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory):
    """A Sentinel on a free loopback port that names 127.0.0.1:6379 as the master `mymaster`."""
    try:
        redis.Redis(port=REDIS_PORT, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    if not shutil.which("redis-server"):
        pytest.skip("no redis-server binary to run a Sentinel")
    port = _free_port()
    config = tmp_path_factory.mktemp("sentinel") / "sentinel.conf"
    config.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {REDIS_PORT} 1\n")
    process = subprocess.Popen(["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=port).sentinel_get_master_addr_by_name("mymaster"):
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the Sentinel did not start"
            time.sleep(0.1)
        yield port
    finally:
        process.kill()
        process.wait()


def test_the_cache_finds_its_master_through_the_sentinels(sentinel):
    # The first Sentinel named is down: the next one answers.
    url = f"sentinel://127.0.0.1:{_free_port()};sentinel://127.0.0.1:{sentinel}/14"
    cache = RedisCache([url], {"OPTIONS": {"pool_class": "config.redis_sentinel.SentinelPool"}})
    key = f"sentinel-test-{uuid.uuid4().hex}"
    cache.set(key, {"grade": 0.8}, 30)
    assert cache.get(key) == {"grade": 0.8}
    # It is the real master's database 14 that holds it.
    assert redis.Redis(port=REDIS_PORT, db=14).exists(cache.make_and_validate_key(key)) == 1
    cache.delete(key)


def test_the_broker_publishes_and_consumes_through_the_sentinels(sentinel):
    url = f"sentinel://127.0.0.1:{sentinel}/14"
    queue_name = f"sentinel-test-{uuid.uuid4().hex}"
    with Connection(url, transport_options={"master_name": redis_sentinel.master_name()}) as connection:
        queue = connection.SimpleQueue(queue_name)
        queue.put({"delivery": 42})
        message = queue.get(timeout=5)
        assert message.payload == {"delivery": 42}
        message.ack()
        queue.close()
    redis.Redis(port=REDIS_PORT, db=14).delete(queue_name)


def test_beat_s_lock_client_speaks_to_the_master(sentinel):
    client = redis_sentinel.client(f"sentinel://127.0.0.1:{sentinel}/14")
    assert client.ping() is True
    assert client.connection_pool.connection_kwargs["db"] == 14


def test_a_malformed_sentinel_url_is_refused_with_what_was_expected():
    with pytest.raises(ValueError, match="expected sentinel://host:26379"):
        redis_sentinel.parse("sentinel://127.0.0.1:26379;redis://127.0.0.1:6379")
    assert redis_sentinel.parse("sentinel://:pw@a:26379;sentinel://b/3") == ([("a", 26379), ("b", 26379)], 3, "pw")


def test_settings_take_a_sentinel_broker_and_derive_the_cache_from_it(sentinel):
    import json
    import os
    import sys

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings",
           "CELERY_BROKER_URL": f"sentinel://127.0.0.1:{sentinel};sentinel://127.0.0.1:{_free_port()}/0",
           "REDIS_SENTINEL_MASTER": "mymaster"}
    env.pop("CACHE_URL", None)
    script = (
        "import django, json; django.setup(); from django.conf import settings; from django.core.cache import cache; "
        "cache.set('sentinel-settings-probe', 1, 5); "
        "print(json.dumps([settings.CACHES['default'], settings.CELERY_BROKER_TRANSPORT_OPTIONS, cache.get('sentinel-settings-probe')]))"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    cache, transport, probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert cache["LOCATION"] == [f"sentinel://127.0.0.1:{sentinel};sentinel://127.0.0.1:{env['CELERY_BROKER_URL'].split(':')[-1].split('/')[0]}/1"]
    assert cache["OPTIONS"]["pool_class"] == "config.redis_sentinel.SentinelPool"
    assert transport["master_name"] == "mymaster" and probe == 1
