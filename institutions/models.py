"""Tenants: institutions, who owns which LTI deployment, courses, and the staff audit trail.

django-lti (`lti_tool`) owns registrations, deployments, contexts, users and line items; the
models here point at them and add what a multi-tenant grade-sync product needs.
"""
from __future__ import annotations

import re

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils.translation import gettext_lazy as _
from lti_tool.models import LtiContext, LtiDeployment, LtiRegistration


class GradePolicy(models.TextChoices):
    HIGHEST = "highest", _("Highest attempt")
    MOST_RECENT = "most_recent", _("Most recent attempt")


class InstitutionQuerySet(models.QuerySet):
    def active(self) -> InstitutionQuerySet:
        return self.filter(is_active=True)


class Institution(models.Model):
    """A customer of the vendor: a school, college or training provider."""

    name = models.CharField(_("name"), max_length=200)
    slug = models.SlugField(_("slug"), max_length=80, unique=True, help_text=_("Short unique id, e.g. 'state-univ'."))
    grade_policy = models.CharField(
        _("grade policy"),
        max_length=20,
        choices=GradePolicy.choices,
        default=GradePolicy.HIGHEST,
        help_text=_("Which attempt's result is sent to the LMS. Only Support staff change it."),
    )
    is_active = models.BooleanField(
        _("accepts grades"), default=True, help_text=_("An inactive institution's deployments launch no grades.")
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = InstitutionQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        permissions = [("change_grade_policy", "Can change an institution's grade policy")]
        constraints = [
            models.CheckConstraint(
                condition=Q(grade_policy__in=GradePolicy.values), name="institution_grade_policy_valid"
            ),
            # "North" and "north" would be two tenants to the database and one to every person reading a URL.
            models.UniqueConstraint(
                Lower("slug"), name="institution_slug_unique_ci",
                violation_error_message=_("An institution with this slug (in any case) already exists."),
            ),
        ]
        indexes = [models.Index(fields=["name"], name="institution_name_idx")]

    def __str__(self) -> str:
        return self.name


class LmsFamily(models.TextChoices):
    CANVAS = "canvas", "Canvas"
    MOODLE = "moodle", "Moodle"
    BLACKBOARD = "blackboard", "Blackboard Learn"
    D2L = "d2l", "D2L Brightspace"
    SCHOOLOGY = "schoology", "Schoology"
    SAKAI = "sakai", "Sakai"
    OTHER = "other", _("Other")


# An origin as a Content-Security-Policy frame-ancestors source names it: scheme, host, optional port.
ORIGIN_PATTERN = re.compile(
    r"^https?://(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)(:[0-9]{1,5})?$"
)
MAX_EXTRA_FRAME_ORIGINS = 10


def validate_frame_origins(value: str) -> None:
    """One origin per line, e.g. https://school.instructure.com: nothing a policy header could be bent by."""
    lines = [line.strip() for line in value.splitlines() if line.strip()]
    wrong = [line for line in lines if not ORIGIN_PATTERN.match(line.lower())]
    if wrong:
        raise ValidationError(
            _("Not an origin (scheme://host[:port], no path): %(wrong)s"), params={"wrong": ", ".join(wrong[:3])}
        )
    if len(lines) > MAX_EXTRA_FRAME_ORIGINS:
        raise ValidationError(_("At most %(n)s origins."), params={"n": MAX_EXTRA_FRAME_ORIGINS})


class RegisteredVia(models.TextChoices):
    HAND = "hand", _("Typed in the admin")
    DYNAMIC = "dynamic", _("LTI Dynamic Registration")


class RegistrationProfile(models.Model):
    """What we know of an LMS registration beyond django-lti's fields."""

    registration = models.OneToOneField(
        LtiRegistration, on_delete=models.CASCADE, related_name="profile", verbose_name=_("registration")
    )
    lms_family = models.CharField(_("LMS"), max_length=20, choices=LmsFamily.choices, default=LmsFamily.OTHER)
    max_requests_in_flight = models.PositiveSmallIntegerField(
        _("max requests in flight"),
        default=4,
        help_text=_("Grade requests sent to this LMS at once; keeps one installation's rate limit from flooding."),
    )
    frame_origins = models.TextField(
        _("also framed from"),
        blank=True,
        validators=[validate_frame_origins],
        help_text=_(
            "Extra origins whose pages may frame this tool, one per line (e.g. https://lms.school.edu). "
            "Not needed for the issuer, the auth URL, the page each launch is posted from or its return URL: "
            "those are allowed per launch already."
        ),
    )
    registered_via = models.CharField(
        _("registered by"), max_length=10, choices=RegisteredVia.choices, default=RegisteredVia.HAND
    )
    # What the platform said of itself at Dynamic Registration (its openid configuration's LTI part,
    # product and version): no token or secret is ever kept here.
    platform_configuration = models.JSONField(_("platform configuration"), default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(registered_via__in=RegisteredVia.values), name="registration_registered_via_valid"),
            models.CheckConstraint(condition=Q(lms_family__in=LmsFamily.values), name="registration_lms_family_valid"),
            models.CheckConstraint(condition=Q(max_requests_in_flight__gte=1), name="registration_in_flight_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.registration} ({self.get_lms_family_display()})"


class DeploymentOwnershipQuerySet(models.QuerySet):
    def accepting_grades(self) -> DeploymentOwnershipQuerySet:
        """Deployments that are active and owned by an active institution."""
        return self.filter(deployment__is_active=True, institution__is_active=True)


class DeploymentOwnership(models.Model):
    """Which institution a django-lti deployment belongs to: at most one.

    One registration (one Canvas) can serve several institutions, each in its own
    sub-account with its own deployment, so ownership is per deployment, not per registration.
    """

    deployment = models.OneToOneField(
        LtiDeployment, on_delete=models.CASCADE, related_name="ownership", verbose_name=_("deployment")
    )
    institution = models.ForeignKey(
        Institution, on_delete=models.PROTECT, related_name="deployments", verbose_name=_("institution")
    )
    assigned_at = models.DateTimeField(auto_now_add=True)
    assigned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = DeploymentOwnershipQuerySet.as_manager()

    class Meta:
        verbose_name = _("deployment ownership")
        indexes = [models.Index(fields=["institution"], name="ownership_institution_idx")]

    def __str__(self) -> str:
        return f"{self.deployment} → {self.institution}"


class CourseDatesSource(models.TextChoices):
    NONE = "none", _("Unknown")
    LMS = "lms", _("From the LMS launch")
    SUPPORT = "support", _("Set by support")


class CopiedVia(models.TextChoices):
    CONTEXT_HISTORY = "context_history", _("the launch's Context.id.history")
    CANVAS_PREVIOUS = "canvas_previous", _("Canvas's previousCourseIds")
    COPY_NOTICE = "copy_notice", _("the LMS's context copy notice (PNS)")


class CourseQuerySet(models.QuerySet):
    def for_institution(self, institution: Institution) -> CourseQuerySet:
        return self.filter(institution=institution)


class Course(models.Model):
    """One LMS course (an LTI context) with the dates that bound grade sync."""

    context = models.OneToOneField(LtiContext, on_delete=models.CASCADE, related_name="course")
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="courses")
    deployment = models.ForeignKey(LtiDeployment, on_delete=models.PROTECT, related_name="courses")
    title = models.CharField(_("title"), max_length=500, blank=True)
    starts_at = models.DateTimeField(_("starts"), null=True, blank=True)
    ends_at = models.DateTimeField(_("ends"), null=True, blank=True)
    dates_source = models.CharField(
        _("dates from"), max_length=10, choices=CourseDatesSource.choices, default=CourseDatesSource.NONE
    )
    # Course copy: the course this one was copied from, and what told us so.
    copied_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="copies", verbose_name=_("copied from")
    )
    copied_via = models.CharField(_("copy found by"), max_length=20, choices=CopiedVia.choices, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = CourseQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(starts_at__isnull=True) | Q(ends_at__isnull=True) | Q(ends_at__gte=models.F("starts_at")),
                name="course_ends_after_start",
            ),
            models.CheckConstraint(
                condition=Q(dates_source__in=CourseDatesSource.values), name="course_dates_source_valid"
            ),
            models.CheckConstraint(
                condition=Q(copied_via__in=[*CopiedVia.values, ""]), name="course_copied_via_valid"
            ),
            models.CheckConstraint(condition=~Q(copied_from=models.F("id")), name="course_not_copied_from_itself"),
        ]
        indexes = [
            models.Index(fields=["institution", "title"], name="course_institution_title_idx"),
            models.Index(fields=["deployment"], name="course_deployment_idx"),
        ]

    def __str__(self) -> str:
        return self.title or self.context.id_on_platform


class ContextCopyNotice(models.Model):
    """An LtiContextCopyNotice the platform sent through its Platform Notification Service (PNS 1.0).

    Kept as it came (its verified claims), once per notice id, and linked to the copy when that course is known.
    """

    deployment = models.ForeignKey(LtiDeployment, on_delete=models.CASCADE, related_name="copy_notices")
    notice_id = models.CharField(_("notice id"), max_length=255)
    context_id_on_platform = models.CharField(_("new course (LMS id)"), max_length=255)
    origin_context_ids = models.JSONField(_("copied from (LMS ids)"), default=list)
    course = models.ForeignKey(Course, null=True, blank=True, on_delete=models.SET_NULL, related_name="copy_notices")
    claims = models.JSONField(default=dict)
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["deployment", "notice_id"], name="copy_notice_once_per_deployment"),
        ]
        indexes = [models.Index(fields=["deployment", "context_id_on_platform"], name="copy_notice_context_idx")]

    def __str__(self) -> str:
        return f"{self.context_id_on_platform} ← {', '.join(self.origin_context_ids)}"


class RegistrationInvitationQuerySet(models.QuerySet):
    def usable(self, now) -> RegistrationInvitationQuerySet:
        return self.filter(used_at__isnull=True, expires_at__gt=now)


class RegistrationInvitation(models.Model):
    """A one-time Dynamic Registration link the integration team gives an institution's LMS admin.

    Only the token's SHA-256 is stored: the link itself is shown once, when it is made.
    """

    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="registration_invitations")
    token_sha256 = models.CharField(max_length=64, unique=True, editable=False)
    lms_family = models.CharField(_("LMS"), max_length=20, choices=LmsFamily.choices, default=LmsFamily.OTHER)
    activate_on_registration = models.BooleanField(
        _("activate on registration"), default=False,
        help_text=_("The new registration and its deployment start taking launches at once; otherwise staff activate them."),
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(_("expires"))
    used_at = models.DateTimeField(_("used"), null=True, blank=True)
    registration = models.ForeignKey(
        LtiRegistration, null=True, blank=True, on_delete=models.SET_NULL, related_name="invitations"
    )
    last_refusal = models.CharField(_("last refusal"), max_length=500, blank=True)

    objects = RegistrationInvitationQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(expires_at__gt=models.F("created_at")), name="invitation_expires_after_creation"),
            models.CheckConstraint(condition=Q(lms_family__in=LmsFamily.values), name="invitation_lms_family_valid"),
            models.CheckConstraint(
                condition=Q(registration__isnull=True) | Q(used_at__isnull=False), name="invitation_registration_when_used"
            ),
        ]
        indexes = [models.Index(fields=["institution", "-created_at"], name="invitation_institution_idx")]

    def __str__(self) -> str:
        return f"Dynamic Registration link for {self.institution} ({self.created_at:%Y-%m-%d %H:%M})"


class AuditEntry(models.Model):
    """One change made by a staff member: who, when, what, old → new.

    Written by `institutions.audit.record_staff_change`, inside the change's transaction.
    """

    acted_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    actor_name = models.CharField(max_length=150, help_text=_("The username when the change was made."))
    action = models.CharField(max_length=60)
    institution = models.ForeignKey(
        Institution, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_entries"
    )
    content_type = models.ForeignKey(ContentType, null=True, on_delete=models.SET_NULL, related_name="+")
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=300, blank=True)
    changes = models.JSONField(default=dict, blank=True, help_text=_("{field: [old, new]}"))

    class Meta:
        verbose_name = _("audit entry")
        verbose_name_plural = _("audit entries")
        ordering = ["-acted_at", "-id"]
        indexes = [
            models.Index(fields=["institution", "-acted_at"], name="audit_institution_time_idx"),
            models.Index(fields=["content_type", "object_id"], name="audit_object_idx"),
            models.Index(fields=["action", "-acted_at"], name="audit_action_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.actor_name} {self.action} {self.object_repr}"


class KeyPhase(models.TextChoices):
    """Where a tool signing key is in its rotation. Platforms cache our JWKS, so a key is published
    before it signs and stays published after it stops."""

    NEXT = "next", _("next: published, not yet signing")
    SIGNING = "signing", _("signing")
    RETIRING = "retiring", _("retiring: still published, no longer signing")
    RETIRED = "retired", _("retired: not published")


class ToolKeyLifecycle(models.Model):
    """The rotation phase of one of the tool's signing keys (django-lti's `Key`), moved on by
    `institutions.keys.advance_rotation`. Exactly one key signs."""

    key = models.OneToOneField("lti_tool.Key", on_delete=models.CASCADE, primary_key=True, related_name="lifecycle")
    phase = models.CharField(max_length=10, choices=KeyPhase.choices)
    published_at = models.DateTimeField()
    # next: when it starts signing; signing/retiring: when it did.
    signing_from = models.DateTimeField(null=True, blank=True)
    # next: how long the key it replaces stays published once this one signs.
    grace = models.DurationField(null=True, blank=True)
    # retiring: when it leaves the JWKS.
    retire_after = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("tool key lifecycle")
        constraints = [
            models.UniqueConstraint(fields=["phase"], condition=Q(phase=KeyPhase.SIGNING), name="one_signing_tool_key"),
            models.CheckConstraint(condition=Q(phase__in=KeyPhase.values), name="tool_key_phase_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.phase})"
