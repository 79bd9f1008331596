"""The vendor's content and the learner's side of it.

Catalog: Activity (+ Question). Placement in LMS courses: Placement (made by deep linking)
and ActivityLink (an LMS resource link bound to an activity, learned at launch).
The learner: Launch (one verified LTI launch, the session is bound to it) and Attempt.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from lti_tool.models import LtiDeployment, LtiResourceLink, LtiUser

from institutions.models import Course


class ActivityKind(models.TextChoices):
    SECTION_HEADER = "section_header", _("Section header")
    READING = "reading", _("Reading")
    VIDEO = "video", _("Video")
    CUSTOM_QUIZ = "custom_quiz", _("Custom quiz")
    COMPETENCY_ASSESSMENT = "competency_assessment", _("Competency assessment")
    LAB = "lab", _("Lab")
    PRACTICE_TEST = "practice_test", _("Practice test")


# Attempts allowed by default (None = unlimited); the instructor may change it for these kinds.
LIMITED_KINDS = {ActivityKind.CUSTOM_QUIZ, ActivityKind.COMPETENCY_ASSESSMENT}
TIMED_KINDS = {ActivityKind.READING, ActivityKind.VIDEO}
QUESTION_KINDS = {ActivityKind.CUSTOM_QUIZ, ActivityKind.COMPETENCY_ASSESSMENT, ActivityKind.PRACTICE_TEST, ActivityKind.LAB}


class Activity(models.Model):
    """One item of the catalog. Section headers group the items that follow them."""

    slug = models.SlugField(max_length=100, unique=True)
    title = models.CharField(max_length=300)
    kind = models.CharField(max_length=30, choices=ActivityKind.choices)
    section = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="items",
        limit_choices_to={"kind": ActivityKind.SECTION_HEADER},
        help_text=_("The section header this item belongs to."),
    )
    position = models.PositiveIntegerField(default=0)
    summary = models.TextField(blank=True)
    body = models.TextField(blank=True, help_text=_("Reading text, video transcript, or lab task."))
    video_url = models.URLField(blank=True)
    # WebVTT captions shown by the video's <track>; a video without them is flagged to the catalog's editors.
    captions_vtt = models.TextField(_("captions (WebVTT)"), blank=True)
    captions_language = models.CharField(_("captions language"), max_length=35, default="en")
    default_points = models.DecimalField(max_digits=7, decimal_places=2, default=10)
    is_published = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = _("activities")
        ordering = ["position", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=ActivityKind.values), name="activity_kind_valid"),
            models.CheckConstraint(condition=Q(default_points__gt=0), name="activity_points_positive"),
        ]
        indexes = [models.Index(fields=["kind", "position"], name="activity_kind_position_idx")]

    def __str__(self) -> str:
        return self.title

    @property
    def is_gradable(self) -> bool:
        return self.kind != ActivityKind.SECTION_HEADER

    @property
    def default_attempts_allowed(self) -> int | None:
        return 1 if self.kind in LIMITED_KINDS else None


class Question(models.Model):
    """A question of a quiz, assessment or practice test, or the check of a lab.

    Multiple choice: `choices` lists the options and `answer` holds the correct index.
    Free answer (labs): `choices` is empty and `answer` lists the accepted answers.
    """

    activity = models.ForeignKey(Activity, on_delete=models.CASCADE, related_name="questions")
    position = models.PositiveIntegerField(default=0)
    prompt = models.TextField()
    choices = models.JSONField(default=list, blank=True)
    answer = models.JSONField()

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return self.prompt[:80]


class Placement(models.Model):
    """An activity an instructor placed in an LMS course through deep linking."""

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="placements")
    activity = models.ForeignKey(Activity, on_delete=models.PROTECT, related_name="placements")
    deployment = models.ForeignKey(LtiDeployment, on_delete=models.PROTECT, related_name="+")
    graded = models.BooleanField()
    score_maximum = models.DecimalField(max_digits=7, decimal_places=2, null=True, blank=True)
    placed_by = models.ForeignKey(LtiUser, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(graded=False) | Q(score_maximum__gt=0), name="placement_graded_has_points"
            ),
        ]
        indexes = [models.Index(fields=["course", "activity"], name="placement_course_activity_idx")]

    def __str__(self) -> str:
        return f"{self.activity} in {self.course}"


class ActivityLink(models.Model):
    """An LMS resource link bound to a catalog activity (learned at its first launch)."""

    resource_link = models.OneToOneField(LtiResourceLink, on_delete=models.CASCADE, related_name="activity_link")
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="activity_links")
    activity = models.ForeignKey(Activity, on_delete=models.PROTECT, related_name="links")
    placement = models.ForeignKey(Placement, null=True, blank=True, on_delete=models.SET_NULL, related_name="links")
    graded = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["course", "activity"], name="link_course_activity_idx")]

    def __str__(self) -> str:
        return f"{self.activity} ({self.resource_link.id_on_platform})"


class LaunchRole(models.TextChoices):
    LEARNER = "learner", _("Learner")
    INSTRUCTOR = "instructor", _("Instructor")
    TEST_USER = "test_user", _("Test student (student view)")
    OTHER = "other", _("Other")


class Launch(models.Model):
    """One verified LTI launch. The browser session is bound to it."""

    lti_user = models.ForeignKey(LtiUser, on_delete=models.CASCADE, related_name="launches")
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="launches")
    deployment = models.ForeignKey(LtiDeployment, on_delete=models.CASCADE, related_name="+")
    resource_link = models.ForeignKey(LtiResourceLink, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    role = models.CharField(max_length=20, choices=LaunchRole.choices)
    roles = models.JSONField(default=list, help_text=_("The roles claim as the LMS sent it."))
    message_type = models.CharField(max_length=60)
    deep_linking_settings = models.JSONField(
        default=dict, blank=True, help_text=_("The deep-linking request's settings (return URL, data, accept_*).")
    )
    return_url = models.URLField(max_length=1000, blank=True)
    frame_origins = models.JSONField(
        default=list,
        blank=True,
        help_text=_("The origins that may frame this launch's pages (courseware.framing), fixed when it was verified."),
    )
    launched_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["lti_user", "course", "-launched_at"], name="launch_user_course_idx")]

    def __str__(self) -> str:
        return f"{self.lti_user} in {self.course} as {self.role}"

    @property
    def is_instructor(self) -> bool:
        return self.role == LaunchRole.INSTRUCTOR


class AttemptAllowance(models.Model):
    """Attempts allowed for one activity in one course, set by its instructor."""

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="attempt_allowances")
    activity = models.ForeignKey(Activity, on_delete=models.CASCADE, related_name="+")
    attempts_allowed = models.PositiveIntegerField(null=True, blank=True, help_text=_("Empty = unlimited."))
    set_by = models.ForeignKey(LtiUser, null=True, on_delete=models.SET_NULL, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["course", "activity"], name="allowance_one_per_course_activity"),
            models.CheckConstraint(
                condition=Q(attempts_allowed__isnull=True) | Q(attempts_allowed__gte=1), name="allowance_at_least_one"
            ),
        ]


class Attempt(models.Model):
    """One try at an activity by one user in one course."""

    activity = models.ForeignKey(Activity, on_delete=models.PROTECT, related_name="attempts")
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="attempts")
    activity_link = models.ForeignKey(ActivityLink, null=True, blank=True, on_delete=models.SET_NULL, related_name="attempts")
    lti_user = models.ForeignKey(LtiUser, null=True, blank=True, on_delete=models.CASCADE, related_name="attempts")
    auth_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="courseware_attempts"
    )
    launch = models.ForeignKey(Launch, null=True, blank=True, on_delete=models.SET_NULL, related_name="attempts")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    score = models.DecimalField(max_digits=6, decimal_places=5, null=True, blank=True, help_text=_("Fraction 0–1."))
    answers = models.JSONField(default=dict, blank=True)
    eligible = models.BooleanField(default=False)
    ineligible_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(score__isnull=True) | (Q(score__gte=0) & Q(score__lte=1)), name="attempt_score_fraction"
            ),
            models.CheckConstraint(
                condition=Q(lti_user__isnull=False) | Q(auth_user__isnull=False), name="attempt_has_a_user"
            ),
        ]
        indexes = [
            models.Index(fields=["lti_user", "course", "activity"], name="attempt_user_course_act_idx"),
            models.Index(fields=["course", "-started_at"], name="attempt_course_started_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.activity} #{self.number}"
