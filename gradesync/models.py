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
        ]

    def __str__(self) -> str:
        return f"{self.activity_title or self.activity_key}: {self.score}"
