"""Celery tasks: thin, named, idempotent; they take ids and call the modules below them. The top of
grade sync: nothing in gradesync imports this module (apps.py loads it); work is queued by name (queue.py).
"""
from __future__ import annotations

import dataclasses

from celery import shared_task
from celery.signals import beat_init, before_task_publish

from config.log_format import bind

from . import health, heartbeats, notice_handlers, resync, sender, sweeper
from .queue import (
    COUNT_RESYNC_PROGRESS,
    DELIVER_GRADE,
    HEARTBEAT,
    QUEUE_RESYNC_DELIVERIES,
    REGISTER_COPY_NOTICE_HANDLER,
    ROLL_UP_DELIVERY_HOURS,
    RUN_RESYNC_JOB,
    SWEEP_DELIVERIES,
    SWEEP_RESYNC_JOBS,
)


@shared_task(name=DELIVER_GRADE, ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def deliver_grade(delivery_id: int, registration_id: int | None = None) -> str:
    """Send one delivery (and, holding its LMS's slot, that LMS's other due ones). Safe to run twice:
    only the worker whose claim succeeds sends a row."""
    with bind(registration=registration_id, delivery=delivery_id):
        return sender.deliver(delivery_id, registration_id)


@shared_task(name=SWEEP_DELIVERIES, ignore_result=True)
def sweep_deliveries() -> dict[str, int]:
    return sweeper.sweep()


# The resync tasks bind only the job: its institution is not in the task's arguments, and reading it
# here would cost a query per task (resync reads the job itself).
@shared_task(name=RUN_RESYNC_JOB, ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def run_resync_job(job_id: int) -> str:
    """Plan a resync job's grades in batches (on the resync queue); re-queues itself to continue."""
    with bind(job=job_id):
        return resync.run_job(job_id)


@shared_task(name=QUEUE_RESYNC_DELIVERIES, ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def queue_resync_deliveries(job_id: int, delivery_ids: list[int]) -> int:
    """Fan one planned batch out into deliver_grade tasks on the resync queue (none if the job was cancelled)."""
    with bind(job=job_id):
        return resync.fan_out(job_id, delivery_ids)


@shared_task(name=COUNT_RESYNC_PROGRESS, ignore_result=True)
def count_resync_progress(job_id: int) -> str:
    """Write a resync job's counters (and Done) from its deliveries; queued by the sender as its grades land."""
    with bind(job=job_id):
        return resync.count_progress(job_id)


@shared_task(name=SWEEP_RESYNC_JOBS, ignore_result=True)
def sweep_resync_jobs() -> dict[str, int]:
    """Restart resync planners that stalled, fail those that stay dead, finish settled jobs (beat)."""
    return resync.sweep_resync_jobs()


@shared_task(name=ROLL_UP_DELIVERY_HOURS, ignore_result=True)
def roll_up_delivery_hours(full: bool = False) -> dict[str, int]:
    """Count sync health's closed chart hours into DeliveryHour (beat; recounting is harmless)."""
    return dataclasses.asdict(health.roll_up_delivery_hours(full=full))


@shared_task(name=REGISTER_COPY_NOTICE_HANDLER, ignore_result=True)
def register_copy_notice_handler(deployment_id: int, handler_url: str) -> str:
    """Register our context copy notice handler with the deployment's LMS (PNS); idempotent, best effort."""
    return notice_handlers.register_copy_notice_handler(deployment_id, handler_url)


@shared_task(name=HEARTBEAT, ignore_result=True, bind=True)
def heartbeat(self) -> str:
    """A worker is alive and consuming (beat schedules it every 15 s; readyz?full=1 reads it)."""
    return heartbeats.worker_ran(self.request.hostname or "")


@beat_init.connect
def _mark_beat_publishes(sender=None, **kwargs) -> None:
    """In the beat process only: each task it publishes refreshes beat's heartbeat."""
    before_task_publish.connect(_beat_published, weak=False)


def _beat_published(sender=None, **kwargs) -> None:
    try:
        heartbeats.beat_published()
    except Exception:  # noqa: BLE001 — a heartbeat must never stop beat from scheduling
        pass
