"""Beat on two hosts: one schedules at a time, and the other takes over when the first stops."""
from __future__ import annotations

import time
import uuid

import pytest

from config import beat
from config.celery import app


@pytest.fixture
def redis_broker(monkeypatch):
    client = beat._redis_for(app)
    if client is None:
        pytest.skip("needs Redis as the broker or cache (CI has it)")
    # A lock of this test's own: parallel test processes may share the broker's Redis database.
    monkeypatch.setattr(beat, "LEADER_KEY", f"celery-beat-leader-test-{uuid.uuid4().hex}")
    yield client
    client.delete(beat.LEADER_KEY)


def _scheduler(tmp_path, name, published):
    scheduler = beat.LeaderScheduler(app=app, schedule_filename=str(tmp_path / name))
    scheduler.apply_async = lambda entry, producer=None, advance=True, **kwargs: published.append(scheduler.identity)
    return scheduler


def _run(schedulers, seconds):
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for scheduler in schedulers:
            scheduler.tick()
        time.sleep(0.02)


def test_two_beats_schedule_once_and_the_standby_takes_over(tmp_path, monkeypatch, redis_broker):
    monkeypatch.setitem(app.conf, "beat_schedule", {"probe": {"task": "gradesync.heartbeat", "schedule": 0.1}})
    monkeypatch.setattr(beat, "LEADER_TTL_SECONDS", 0.5)
    published: list[str] = []
    first, second = _scheduler(tmp_path, "a", published), _scheduler(tmp_path, "b", published)
    _run([first, second], 1.0)
    assert len(published) >= 5 and set(published) == {first.identity}, "only the first to take the lock schedules"
    assert redis_broker.get(beat.LEADER_KEY).decode() == first.identity

    # The scheduling host dies (no more ticks, its lock not let go): the standby takes over once it lapses.
    published.clear()
    _run([second], 1.5)
    assert published and set(published) == {second.identity}
    assert redis_broker.get(beat.LEADER_KEY).decode() == second.identity


def test_a_beat_that_stops_cleanly_hands_over_at_once(tmp_path, monkeypatch, redis_broker):
    monkeypatch.setitem(app.conf, "beat_schedule", {"probe": {"task": "gradesync.heartbeat", "schedule": 0.1}})
    published: list[str] = []
    first, second = _scheduler(tmp_path, "a", published), _scheduler(tmp_path, "b", published)
    _run([first, second], 0.3)
    first.close()
    assert redis_broker.get(beat.LEADER_KEY) is None
    published.clear()
    _run([second], 0.5)
    assert set(published) == {second.identity}
