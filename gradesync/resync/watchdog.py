"""Resync watchdog (Celery beat): restart a planner that stalled, fail one that stays dead so that it frees its
scope, and finish planned jobs whose deliveries have all settled."""
from __future__ import annotations

import datetime

from django.utils import timezone

from ..models import ACTIVE_JOB_STATUSES, ResyncJob, ResyncJobStatus
from . import jobs
from .jobs import refresh_progress

STALLED_AFTER = datetime.timedelta(minutes=15)  # planning this long without progress: restart it
RESTART_GRACE = datetime.timedelta(minutes=45)  # restarted, and still none this long: fail it, freeing its scope

_RESTARTED = "Planning stalled"  # how the sweeper's note begins; the next batch planned clears it


def sweep_resync_jobs(*, now: datetime.datetime | None = None) -> dict[str, int]:
    """Keep dead planners from holding their scope for ever (the one-active-job constraint would).

    A queued or running job whose planning has not moved (`updated_at`, written by every batch)
    for STALLED_AFTER gets its planning task queued again, once: it continues from its cursor,
    and should the first task turn up after all, the two take turns harmlessly. A job that then
    makes no progress for RESTART_GRACE is marked failed with the reason, which frees its scope;
    what it planned is still sent. Planned jobs whose deliveries have all settled are marked
    done: the sender writes Done as a job's last grade lands, so this catches the landings it did
    not see (the sweeper giving up on a row, a row re-planned by another job, a worker stopped
    between a send and its note). The system does this, not a staff member: nothing is audited;
    the job's message says it.
    """
    now = now or timezone.now()
    counts = {"restarted": 0, "failed": 0, "done": 0}
    unplanned = ResyncJob.objects.filter(status__in=ACTIVE_JOB_STATUSES, planned_at__isnull=True)
    for job in unplanned.filter(message__startswith=_RESTARTED, updated_at__lt=now - RESTART_GRACE):
        if job.status == ResyncJobStatus.QUEUED:
            what = "It never started"
        else:
            what = f"{job.planned:,} of about {job.estimated:,} grades were planned; those are still sent"
        # Conditional on updated_at: a batch planned meanwhile wins.
        counts["failed"] += ResyncJob.objects.filter(pk=job.pk, status=job.status, updated_at=job.updated_at).update(
            status=ResyncJobStatus.FAILED, finished_at=now, updated_at=now,
            message=f"Stopped by the system at {now:%Y-%m-%d %H:%M:%S} UTC: planning stalled and made no progress in "
            f"the {_minutes(now - job.updated_at)} minutes after the system restarted it (its worker probably "
            f"keeps stopping). {what}. Start the resync again to send the rest.",
        )
    for job in unplanned.filter(updated_at__lt=now - STALLED_AFTER).exclude(message__startswith=_RESTARTED):
        if ResyncJob.objects.filter(pk=job.pk, status=job.status, updated_at=job.updated_at).update(
            updated_at=now,
            message=f"{_RESTARTED}: no progress since {job.updated_at:%Y-%m-%d %H:%M:%S} UTC; the system restarted it at "
            f"{now:%H:%M:%S} UTC.",
        ):
            counts["restarted"] += 1
            jobs._queue_job(job.pk)
    for job in ResyncJob.objects.filter(status=ResyncJobStatus.RUNNING, planned_at__isnull=False):
        if refresh_progress(job).status == ResyncJobStatus.DONE:
            counts["done"] += 1
    return counts


def _minutes(delta: datetime.timedelta) -> int:
    return int(delta.total_seconds() // 60)
