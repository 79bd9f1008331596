"""Celery tasks: thin, named, idempotent; they take ids and call services."""
from __future__ import annotations

import dataclasses

from celery import shared_task

from . import health, resync, services


@shared_task(name="gradesync.deliver_grade", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def deliver_grade(delivery_id: int, registration_id: int | None = None) -> str:
    """Send one delivery (and, holding its LMS's slot, that LMS's other due ones). Safe to run twice:
    only the worker whose claim succeeds sends a row."""
    return services.deliver(delivery_id, registration_id)


@shared_task(name="gradesync.sweep_deliveries", ignore_result=True)
def sweep_deliveries() -> dict[str, int]:
    return services.sweep()


@shared_task(name="gradesync.run_resync_job", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def run_resync_job(job_id: int) -> str:
    """Plan a resync job's grades in batches (on the resync queue); re-queues itself to continue."""
    return resync.run_job(job_id)


@shared_task(name="gradesync.queue_resync_deliveries", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def queue_resync_deliveries(job_id: int, delivery_ids: list[int]) -> int:
    """Fan one planned batch out into deliver_grade tasks on the resync queue (none if the job was cancelled)."""
    return resync.fan_out(job_id, delivery_ids)


@shared_task(name="gradesync.sweep_resync_jobs", ignore_result=True)
def sweep_resync_jobs() -> dict[str, int]:
    """Restart resync planners that stalled, fail those that stay dead, finish settled jobs (beat)."""
    return resync.sweep_resync_jobs()


@shared_task(name="gradesync.roll_up_delivery_hours", ignore_result=True)
def roll_up_delivery_hours(full: bool = False) -> dict[str, int]:
    """Count sync health's closed chart hours into DeliveryHour (beat; recounting is harmless)."""
    return dataclasses.asdict(health.roll_up_delivery_hours(full=full))
