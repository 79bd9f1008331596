"""Grade sync's own ledger: the results courseware (or any activity engine) reported.

Resync and policy changes read only this ledger, never courseware's tables.
"""
from __future__ import annotations

import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q, Value
from django.db.models.functions import Coalesce
from django.utils.translation import gettext_lazy as _
from lti_tool.models import LtiDeployment, LtiResourceLink, LtiUser

from institutions.models import Course


class Result(models.Model):
    """One scored, finished attempt as reported through `gradesync.api.record_result`."""

    source_ref = models.CharField(
        max_length=100, unique=True, help_text=_("The reporter's id for the attempt; makes reporting idempotent.")
    )
    lti_user = models.ForeignKey(LtiUser, null=True, blank=True, on_delete=models.CASCADE, related_name="results")
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="results")
    activity_key = models.CharField(max_length=100, help_text=_("The activity's id in the catalog."))
    activity_title = models.CharField(max_length=300, blank=True)
    resource_link = models.ForeignKey(LtiResourceLink, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    score = models.DecimalField(max_digits=6, decimal_places=5, help_text=_("Fraction of the maximum, 0–1."))
    completed_at = models.DateTimeField()
    # The eligibility facts of the launch the attempt came from.
    launch_role = models.CharField(max_length=20, blank=True, help_text=_("Empty when there was no LTI launch."))
    launched_course = models.ForeignKey(Course, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    launch_deployment = models.ForeignKey(LtiDeployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    link_graded = models.BooleanField(null=True, help_text=_("As courseware said; empty = judge by the line item."))
    is_eligible = models.BooleanField(default=False)
    ineligible_reason = models.CharField(max_length=300, blank=True)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        permissions = [
            ("resync_grades", "Can resync grades to the LMS"),
            ("view_diagnostics", "Can read grade sync diagnostics"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(score__gte=0) & Q(score__lte=1), name="result_score_fraction"),
        ]
        indexes = [
            models.Index(fields=["course", "lti_user", "activity_key"], name="result_course_user_act_idx"),
            models.Index(fields=["-recorded_at"], name="result_recorded_idx"),
            models.Index(fields=["is_eligible", "-recorded_at"], name="result_eligible_idx"),
            # The changelist's launch role filter (with or without is_eligible), newest first.
            models.Index(fields=["launch_role", "is_eligible", "-id"], name="result_role_eligible_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.activity_title or self.activity_key}: {self.score}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SENDING = "sending", _("Sending")
    RETRYING = "retrying", _("Retrying")
    SENT = "sent", _("Sent")
    REFUSED = "refused", _("Refused by the LMS")
    DEAD = "dead", _("Failed (gave up)")


OPEN_STATUSES = [DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.RETRYING]


class DeliveryQuerySet(models.QuerySet):
    def open(self) -> DeliveryQuerySet:
        return self.filter(status__in=OPEN_STATUSES)

    def for_institution(self, institution) -> DeliveryQuerySet:
        return self.filter(institution=institution)


class Delivery(models.Model):
    """The outbox: one grade to put in the LMS gradebook for one (line item, user).

    Written in the transaction that records the result; a task then sends it. At most one open
    delivery exists per (line item, user): a newer grade updates it (and bumps `version`) instead
    of queueing behind it, so an older grade never lands after a newer one.
    """

    result = models.ForeignKey(Result, on_delete=models.CASCADE, related_name="deliveries")
    # The outbox row is updated twice per send and every index is written each time: no single-column
    # index where a composite one below leads with the column (course, institution, line item, job).
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    institution = models.ForeignKey(
        "institutions.Institution", on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    registration = models.ForeignKey("lti_tool.LtiRegistration", on_delete=models.CASCADE, related_name="+")
    deployment = models.ForeignKey(LtiDeployment, on_delete=models.CASCADE, related_name="+")
    lti_user = models.ForeignKey(LtiUser, on_delete=models.CASCADE, related_name="deliveries")
    resource_link = models.ForeignKey(LtiResourceLink, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    line_item = models.ForeignKey(
        "lti_tool.LtiLineItem", null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries",
        db_index=False, help_text=_("Empty until it is looked up on the LMS."),
    )
    activity_key = models.CharField(max_length=100)
    score = models.DecimalField(max_digits=6, decimal_places=5, help_text=_("Fraction of the maximum, 0–1."))
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    resync_job = models.ForeignKey(
        "gradesync.ResyncJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries",
        db_index=False, help_text=_("The resync job that planned (or last re-planned) this delivery."),
    )
    version = models.PositiveIntegerField(default=1, help_text=_("Bumped when a newer grade replaces this one."))
    is_resync = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    answer_lost = models.BooleanField(
        default=False,
        help_text=_("A send was cut off without the LMS's answer (the worker stopped): the LMS's result is read "
                    "before sending again, so a grade that landed is not posted twice."),
    )
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_message = models.TextField(blank=True)
    last_timestamp = models.DateTimeField(null=True, blank=True, help_text=_("The score timestamp last sent."))
    recorded_at = models.DateTimeField(help_text=_("When the grade was committed (latency is measured from here)."))
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        verbose_name_plural = _("deliveries")
        constraints = [
            models.UniqueConstraint(
                fields=["line_item", "lti_user"],
                condition=Q(status__in=OPEN_STATUSES) & Q(line_item__isnull=False),
                name="delivery_one_open_per_line_item_user",
            ),
            models.UniqueConstraint(
                fields=["resource_link", "lti_user"],
                condition=Q(status__in=OPEN_STATUSES) & Q(line_item__isnull=True),
                name="delivery_one_open_per_unbound_link_user",
            ),
            models.CheckConstraint(condition=Q(score__gte=0) & Q(score__lte=1), name="delivery_score_fraction"),
            models.CheckConstraint(condition=Q(status__in=DeliveryStatus.values), name="delivery_status_valid"),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="delivery_due_idx"),
            # A sender's batch: its LMS's due rows, live grades first, oldest first.
            models.Index(
                fields=["registration", "is_resync", "next_attempt_at"],
                condition=Q(status__in=["pending", "retrying"]),
                name="delivery_registration_due_idx",
            ),
            models.Index(fields=["institution", "status", "-updated_at"], name="delivery_inst_status_idx"),
            models.Index(fields=["course", "lti_user", "activity_key"], name="delivery_course_user_act_idx"),
            models.Index(fields=["line_item", "lti_user", "-id"], name="delivery_line_item_user_idx"),
            # Sync health (gradesync.health) reads the last week through these, never the whole outbox:
            # counts by state and institution, and the hourly chart (an index-only scan of the window);
            models.Index(fields=["updated_at", "status", "institution"], name="delivery_window_idx"),
            # latency of live grades (PostgreSQL: index-only, `include` is ignored elsewhere);
            models.Index(
                fields=["updated_at"], include=["recorded_at", "sent_at", "institution"],
                condition=Q(status="sent", is_resync=False), name="delivery_latency_idx",
            ),
            # the oldest undelivered grade (a handful of open rows);
            models.Index(
                fields=["recorded_at"], include=["institution"], condition=Q(status__in=OPEN_STATUSES),
                name="delivery_open_recorded_idx",
            ),
            # and the top refusal reasons.
            models.Index(fields=["updated_at", "institution"], condition=Q(status="refused"), name="delivery_refused_idx"),
            # The chart's open rows by hour: the rollup (DeliveryHour) is trusted for an hour only while
            # these still number what it counted (a handful of rows, where the window index is the week).
            models.Index(
                fields=["updated_at"], include=["institution"], condition=Q(status__in=OPEN_STATUSES),
                name="delivery_open_updated_idx",
            ),
            # The changelist's other filters, so that a value matching few rows (or none) is not a
            # scan of the table: partial, so that the outbox's updates rarely pay for them.
            models.Index(fields=["-id"], condition=Q(is_resync=True), name="delivery_resync_rows_idx"),
            models.Index(fields=["sent_at"], condition=Q(sent_at__isnull=False), name="delivery_sent_at_idx"),
            models.Index(fields=["resync_job", "status"], name="delivery_resync_job_idx"),
        ]

    def __str__(self) -> str:
        return f"Delivery {self.pk} ({self.status})"


class DeliveryExchange(models.Model):
    """One request to the LMS for a delivery and what it answered."""

    # Indexed by exchange_delivery_idx below, which leads with it (one index less per send).
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="exchanges", db_index=False)
    attempted_at = models.DateTimeField(auto_now_add=True)
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=20)
    score_given = models.FloatField(null=True)
    score_maximum = models.FloatField(null=True)
    timestamp_sent = models.DateTimeField(null=True)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["-attempted_at", "-id"]
        indexes = [models.Index(fields=["delivery", "-attempted_at"], name="exchange_delivery_idx")]


class SyncWarning(models.Model):
    """Something support should know about a course's grade sync (e.g. two line items for one activity)."""

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="sync_warnings")
    activity_key = models.CharField(max_length=100, blank=True)
    kind = models.CharField(max_length=40)
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["course", "activity_key", "kind"], name="sync_warning_unique"),
        ]



class ResyncJobStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    CANCELLED = "cancelled", _("Cancelled")
    FAILED = "failed", _("Failed")


ACTIVE_JOB_STATUSES = [ResyncJobStatus.QUEUED, ResyncJobStatus.RUNNING]
# Stand-ins for "no limit" in the one-active-job constraint: NULLs never collide in a unique index.
_NO_ID = Value(0)
_NO_TIME = Value(datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc), output_field=models.DateTimeField())


class ResyncJob(models.Model):
    """A request to resend the policy's current grades for one scope, worked through in batches.

    The scope is the institution plus, optionally, a course, a learner, an activity, one
    delivery, and a window on when results were completed. `planned` and `skipped` are
    written by the planner; `sent`, `refused` and `failed` are read back from the job's
    deliveries (`gradesync.resync.refresh_progress`).
    """

    institution = models.ForeignKey("institutions.Institution", on_delete=models.CASCADE, related_name="resync_jobs")
    course = models.ForeignKey(Course, null=True, blank=True, on_delete=models.CASCADE, related_name="resync_jobs")
    lti_user = models.ForeignKey(
        LtiUser, null=True, blank=True, on_delete=models.CASCADE, related_name="+", verbose_name=_("learner")
    )
    activity_key = models.CharField(max_length=100, blank=True)
    delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text=_("Resync the grade of this one delivery."),
    )
    completed_from = models.DateTimeField(null=True, blank=True, help_text=_("Only results completed at or after."))
    completed_until = models.DateTimeField(null=True, blank=True, help_text=_("Only results completed before."))
    only_changed = models.BooleanField(
        default=False, help_text=_("Only grades whose policy grade differs from the last grade sent.")
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by_instructor = models.ForeignKey(
        LtiUser, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text=_("The instructor who asked from an LTI launch."),
    )
    requested_by_name = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=ResyncJobStatus.choices, default=ResyncJobStatus.QUEUED)
    estimated = models.PositiveIntegerField(default=0, help_text=_("Grades in scope when the job was asked for."))
    planned = models.PositiveIntegerField(default=0)
    sent = models.PositiveIntegerField(default=0)
    refused = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    cursor = models.JSONField(null=True, blank=True, help_text=_("The last (course, learner, activity) planned."))
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    planned_at = models.DateTimeField(null=True, blank=True, help_text=_("When planning finished."))
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                "institution",
                Coalesce("course", _NO_ID),
                Coalesce("lti_user", _NO_ID),
                "activity_key",
                Coalesce("delivery", _NO_ID),
                Coalesce("completed_from", _NO_TIME),
                Coalesce("completed_until", _NO_TIME),
                "only_changed",
                condition=Q(status__in=ACTIVE_JOB_STATUSES),
                name="resyncjob_one_active_per_scope",
                violation_error_message=_("A resync of this scope is already queued or running."),
            ),
            models.CheckConstraint(condition=Q(status__in=ResyncJobStatus.values), name="resyncjob_status_valid"),
            models.CheckConstraint(
                condition=Q(completed_from__isnull=True) | Q(completed_until__isnull=True)
                | Q(completed_until__gt=models.F("completed_from")),
                name="resyncjob_window_ordered",
            ),
        ]
        indexes = [
            models.Index(fields=["-created_at"], name="resyncjob_created_idx"),
            models.Index(fields=["course", "-created_at"], name="resyncjob_course_created_idx"),
            models.Index(fields=["status", "-created_at"], name="resyncjob_status_idx"),
        ]

    def __str__(self) -> str:
        return f"Resync #{self.pk} ({self.get_status_display()})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_JOB_STATUSES


class DeliveryHour(models.Model):
    """Sync health's hourly chart, rolled up: the outbox's rows whose `updated_at` falls in one hour,
    by status when counted — per institution, and once more for all institutions (no institution).

    The chart plots exactly what a grouped count of the outbox would (`gradesync.health`): rows by
    the hour of their last `updated_at`, split sent / failed (refused, dead) / open. The delivery
    path changes a row's status without touching `updated_at` (QuerySet.update), so an hour's rows
    stay in it and only its open rows still change; a re-planned or withdrawn open row leaves it.
    Hence an hour's counts stay right while its open rows number what was counted, which the chart
    checks against the outbox on `delivery_open_updated_idx` before trusting them. Written only by
    `health.roll_up_delivery_hours` (beat), which deletes and rewrites the hours it recounts.
    """

    hour = models.DateTimeField(help_text=_("The hour's start (UTC)."))
    institution = models.ForeignKey(
        "institutions.Institution", null=True, blank=True, on_delete=models.CASCADE, related_name="+",
        help_text=_("Empty: every institution's rows (the hour is counted even when it had none)."),
    )
    sent = models.PositiveIntegerField(default=0)
    refused = models.PositiveIntegerField(default=0)
    dead = models.PositiveIntegerField(default=0)
    open = models.PositiveIntegerField(default=0, help_text=_("Pending, sending or retrying when counted."))
    computed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "institution"], condition=Q(institution__isnull=False), name="deliveryhour_one_per_institution",
            ),
            models.UniqueConstraint(fields=["hour"], condition=Q(institution__isnull=True), name="deliveryhour_one_total"),
        ]
        # The chart reads a range of hours for one institution, or the totals: the constraints' indexes.

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.institution_id or 'all'}: {self.sent} sent"
