"""The task queue's door: grade sync's task names, and the one place that queues them (by name, so
nothing in gradesync imports tasks.py, which sits on top and calls down).
"""
from __future__ import annotations

from collections.abc import Sequence

from celery import current_app

DELIVER_GRADE = "gradesync.deliver_grade"  # runs sender.deliver
SWEEP_DELIVERIES = "gradesync.sweep_deliveries"  # runs sweeper.sweep
RUN_RESYNC_JOB = "gradesync.run_resync_job"  # runs resync.run_job
QUEUE_RESYNC_DELIVERIES = "gradesync.queue_resync_deliveries"  # runs resync.fan_out
SWEEP_RESYNC_JOBS = "gradesync.sweep_resync_jobs"  # runs resync.sweep_resync_jobs
COUNT_RESYNC_PROGRESS = "gradesync.count_resync_progress"  # runs resync.count_progress
ROLL_UP_DELIVERY_HOURS = "gradesync.roll_up_delivery_hours"  # runs health.roll_up_delivery_hours
REGISTER_COPY_NOTICE_HANDLER = "gradesync.register_copy_notice_handler"  # runs notice_handlers.register_copy_notice_handler
HEARTBEAT = "gradesync.heartbeat"  # runs heartbeats.worker_ran (beat's own heartbeat: tasks.py)


def send(name: str, args: Sequence, *, queue: str, countdown: float | None = None) -> None:
    """Queue the task registered under `name` (tasks.py, loaded with the app).

    Through the registered task's apply_async, not send_task: in eager mode (tests, the embedded
    default) apply_async runs the task in this process, send_task would only publish it.
    """
    current_app.tasks[name].apply_async(args=list(args), queue=queue, countdown=countdown)


def enqueue_delivery(delivery_id: int, *, resync: bool = False, registration_id: int | None = None) -> None:
    """Queue the delivery's task; with its registration's id the task needs no query to find its LMS."""
    send(DELIVER_GRADE, [delivery_id, registration_id], queue="resync" if resync else "grades")
