"""A grade policy change that finishes the job: change it and resync what it changes, in one service; and,
after a change that no resync followed, how many grades in the LMS now differ from the policy."""
from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import transaction

from institutions.models import AuditEntry, Institution
from institutions.services import change_grade_policy

from ..models import ResyncJob, ResyncJobStatus
from .jobs import start_resync
from .scope import ResyncRefused, ResyncScope, preview_resync

POLICY_CHANGED = "grade_policy.changed"  # institutions.services.change_grade_policy's audit action
DRIFT_CACHE_SECONDS = 60


@dataclass(frozen=True)
class PolicyChangeOutcome:
    """What a policy change did: `changed` (False: it was already that policy), the resync job it started (if
    any), how many grades the new policy puts differently, and why a resync asked for did not start."""

    changed: bool
    job: ResyncJob | None = None
    affected: int = 0
    refusal: ResyncRefused | None = None


def change_policy_and_resync(
    *, institution: Institution, policy: str, acting_user: AbstractBaseUser, resync_affected: bool
) -> PolicyChangeOutcome:
    """Change the institution's grade policy (audited) and, when asked, resync the grades it changes.

    No job is created when no grade differs: a job of nothing would only be noise in the jobs list. A resync
    refused (the same resync already running) leaves the policy changed and says why.
    """
    with transaction.atomic():
        if not change_grade_policy(institution=institution, policy=policy, acting_user=acting_user):
            return PolicyChangeOutcome(changed=False)
        if not resync_affected:
            return PolicyChangeOutcome(changed=True)
        institution.refresh_from_db()
        scope = ResyncScope(institution=institution, only_changed=True)
        affected = preview_resync(scope).grades
        if affected == 0:
            return PolicyChangeOutcome(changed=True)
        try:
            job = start_resync(scope=scope, acting_user=acting_user, estimated=affected)
        except ResyncRefused as refusal:
            return PolicyChangeOutcome(changed=True, affected=affected, refusal=refusal)
        return PolicyChangeOutcome(changed=True, job=job, affected=job.estimated)


@dataclass(frozen=True)
class PolicyDrift:
    """Grades in the LMS that differ from what the current policy picks, since its last change."""

    grades: int
    policy_changed_at: datetime.datetime


def _resynced_whole_institution_since(institution: Institution, since: datetime.datetime) -> bool:
    return ResyncJob.objects.filter(
        institution=institution, course=None, lti_user=None, activity_key="", delivery=None,
        completed_from=None, completed_until=None, created_at__gte=since,
    ).exclude(status__in=[ResyncJobStatus.CANCELLED, ResyncJobStatus.FAILED]).exists()


def policy_drift(institution: Institution) -> PolicyDrift | None:
    """After a policy change that no whole-institution resync followed: how many grades it left differing.

    None when the policy never changed, a resync of the whole institution has been asked for since (queued,
    running or done), or no grade differs. The count is the one a resync of "only grades that differ from the
    last grade sent" would send (a grade never sent counts), recounted at most once a minute per change: it reads
    every key of the institution.
    """
    change = (
        AuditEntry.objects.filter(institution=institution, action=POLICY_CHANGED).order_by("-acted_at", "-id").first()
    )
    if change is None or _resynced_whole_institution_since(institution, change.acted_at):
        return None
    key = f"gradesync:policy-drift:{institution.pk}:{change.pk}"
    grades = cache.get(key)
    if grades is None:
        grades = preview_resync(ResyncScope(institution=institution, only_changed=True)).grades
        cache.set(key, grades, DRIFT_CACHE_SECONDS)
    return PolicyDrift(grades=grades, policy_changed_at=change.acted_at) if grades else None
