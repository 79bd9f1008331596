"""Grade sync's own ledger: the results courseware (or any activity engine) reported.

Resync and policy changes read only this ledger, never courseware's tables.
"""
from __future__ import annotations

from django.db import models
from django.db.models import Q
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
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="deliveries")
    institution = models.ForeignKey("institutions.Institution", on_delete=models.CASCADE, related_name="deliveries")
    registration = models.ForeignKey("lti_tool.LtiRegistration", on_delete=models.CASCADE, related_name="+")
    deployment = models.ForeignKey(LtiDeployment, on_delete=models.CASCADE, related_name="+")
    lti_user = models.ForeignKey(LtiUser, on_delete=models.CASCADE, related_name="deliveries")
    resource_link = models.ForeignKey(LtiResourceLink, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    line_item = models.ForeignKey(
        "lti_tool.LtiLineItem", null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries",
        help_text=_("Empty until it is looked up on the LMS."),
    )
    activity_key = models.CharField(max_length=100)
    score = models.DecimalField(max_digits=6, decimal_places=5, help_text=_("Fraction of the maximum, 0–1."))
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    version = models.PositiveIntegerField(default=1, help_text=_("Bumped when a newer grade replaces this one."))
    is_resync = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
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
            models.Index(fields=["institution", "status", "-updated_at"], name="delivery_inst_status_idx"),
            models.Index(fields=["course", "lti_user", "activity_key"], name="delivery_course_user_act_idx"),
            models.Index(fields=["line_item", "lti_user", "-id"], name="delivery_line_item_user_idx"),
            models.Index(fields=["-updated_at"], name="delivery_updated_idx"),
        ]

    def __str__(self) -> str:
        return f"Delivery {self.pk} ({self.status})"


class DeliveryExchange(models.Model):
    """One request to the LMS for a delivery and what it answered."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="exchanges")
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

