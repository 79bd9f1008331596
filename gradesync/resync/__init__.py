"""Resync: resend the policy's current grades at any scope, as a job worked through in batches.
The package's door: the names its callers use, from scope (and previews), jobs (and progress), planning, watchdog.

scope      ResyncScope: which grades; preview_resync, preview_policy_change: how many, on which LMSes.
jobs       start_resync: permission, one active job per scope (the database decides), the job row
           and its audit entry; planning queued after commit. request_course_resync: the
           instructor's door, their own course, at most once per 10 minutes. cancel_resync: stop
           planning, withdraw the job's deliveries no worker has picked up. refresh_progress:
           counters from the job's deliveries (one aggregate); DONE once planned and settled.
planning   run_job: the task's body, keys planned in set-based batches, re-queued when its time
           slice ends; fan_out: senders started for a planned batch.
watchdog   sweep_resync_jobs: beat's safety net, a dead planner never holds its scope for ever.
"""
from .jobs import (
    INSTRUCTOR_COOLDOWN,
    RESYNC_PERMISSION,
    CourseResyncRequest,
    cancel_resync,
    polled_progress,
    refresh_progress,
    request_course_resync,
    start_resync,
)
from .planning import BATCH_SIZE, fan_out, run_job
from .scope import ResyncPreview, ResyncRefused, ResyncScope, preview_policy_change, preview_resync
from .watchdog import sweep_resync_jobs

__all__ = [
    "BATCH_SIZE",
    "INSTRUCTOR_COOLDOWN",
    "RESYNC_PERMISSION",
    "CourseResyncRequest",
    "ResyncPreview",
    "ResyncRefused",
    "ResyncScope",
    "cancel_resync",
    "fan_out",
    "polled_progress",
    "preview_policy_change",
    "preview_resync",
    "refresh_progress",
    "request_course_resync",
    "run_job",
    "start_resync",
    "sweep_resync_jobs",
]
