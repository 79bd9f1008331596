"""Resync: resend the policy's current grades at any scope, as a job worked through in batches.
The package's door: the names its callers use, from scope (and previews), jobs (and progress), planning, watchdog.

scope      ResyncScope: which grades; preview_resync, preview_policy_change: how many, on which LMSes;
           courses_/learners_/activities_to_resync: a scope chosen by name, within an institution and course.
jobs       start_resync: permission, one active job per scope (the database decides), the job row
           and its audit entry; planning queued after commit. request_course_resync: the
           instructor's door, their own course, at most once per 10 minutes. cancel_resync: stop
           planning, withdraw the job's deliveries no worker has picked up, report the rest.
           refresh_progress / count_progress: counters from the job's deliveries (one aggregate),
           written as grades land; DONE once planned and settled. progress_of: what pages read.
planning   run_job: the task's body, keys planned in set-based batches, re-queued when its time
           slice ends; fan_out: senders started for a planned batch.
policy_change  change_policy_and_resync: the policy and, when asked, a job for what it changes (none when
           nothing does); policy_drift: after a change no resync followed, the grades that now differ.
watchdog   sweep_resync_jobs: beat's safety net, a dead planner never holds its scope for ever.
"""
from .jobs import (
    INSTRUCTOR_COOLDOWN,
    RESYNC_PERMISSION,
    CancelReport,
    CourseResyncRequest,
    cancel_resync,
    count_progress,
    polled_progress,
    progress_of,
    refresh_progress,
    request_course_resync,
    start_resync,
)
from .planning import BATCH_SIZE, fan_out, run_job
from .policy_change import PolicyChangeOutcome, PolicyDrift, change_policy_and_resync, policy_drift
from .scope import (
    ResyncPreview,
    ResyncRefused,
    ResyncScope,
    activities_to_resync,
    activity_title,
    courses_to_resync,
    learners_to_resync,
    preview_policy_change,
    preview_resync,
)
from .watchdog import sweep_resync_jobs

__all__ = [
    "BATCH_SIZE",
    "INSTRUCTOR_COOLDOWN",
    "RESYNC_PERMISSION",
    "CancelReport",
    "CourseResyncRequest",
    "PolicyChangeOutcome",
    "PolicyDrift",
    "ResyncPreview",
    "ResyncRefused",
    "ResyncScope",
    "activities_to_resync",
    "activity_title",
    "cancel_resync",
    "count_progress",
    "change_policy_and_resync",
    "courses_to_resync",
    "fan_out",
    "learners_to_resync",
    "policy_drift",
    "polled_progress",
    "progress_of",
    "preview_policy_change",
    "preview_resync",
    "refresh_progress",
    "request_course_resync",
    "run_job",
    "start_resync",
    "sweep_resync_jobs",
]
