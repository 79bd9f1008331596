"""The sandbox LMS's own data: a small LTI 1.3 platform. Not for production.

Nothing here points at the tool's models: the sandbox talks to the tool only over HTTP.
"""
from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class Profile(models.TextChoices):
    GENERIC = "generic", "Generic (spec)"
    CANVAS = "canvas", "Canvas"
    MOODLE = "moodle", "Moodle"


class Role(models.TextChoices):
    INSTRUCTOR = "instructor", "Instructor"
    TEACHING_ASSISTANT = "ta", "Teaching assistant"
    LEARNER = "learner", "Learner"
    TEST_USER = "test_user", "Student view (TestUser)"


class SandboxPlatform(models.Model):
    """One LMS installation: an issuer, its endpoints under `base_url`, its signing keys."""

    name = models.CharField(max_length=200, default="Sandbox LMS")
    base_url = models.URLField(help_text="Where the sandbox is served, e.g. http://127.0.0.1:8000/sandbox-lms")
    issuer = models.URLField(unique=True)
    guid = models.UUIDField(default=uuid.uuid4, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    def url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}/{path.lstrip('/')}"


class SandboxKey(models.Model):
    """An RSA key of the platform. The newest active key signs; every published key is in the JWKS."""

    platform = models.ForeignKey(SandboxPlatform, on_delete=models.CASCADE, related_name="keys")
    kid = models.CharField(max_length=64, unique=True)
    private_pem = models.TextField()
    public_jwk = models.JSONField()
    is_published = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]


class SandboxRegistration(models.Model):
    """A tool registered on the platform (a Canvas developer key, a Moodle external tool)."""

    platform = models.ForeignKey(SandboxPlatform, on_delete=models.CASCADE, related_name="registrations")
    name = models.CharField(max_length=200)
    client_id = models.CharField(max_length=200)
    profile = models.CharField(max_length=20, choices=Profile.choices, default=Profile.GENERIC)
    login_url = models.URLField(max_length=500)
    launch_url = models.URLField(max_length=500, help_text="Default target_link_uri")
    redirect_uris = models.JSONField(default=list, help_text="Registered redirect URIs (the launch URL if empty)")
    deep_linking_url = models.URLField(max_length=500, blank=True)
    jwks_url = models.URLField(max_length=500, blank=True)
    tool_public_jwks = models.JSONField(default=dict, blank=True, help_text="A JWKS used when no JWKS URL is set")
    custom = models.JSONField(default=dict, blank=True, help_text="Custom parameters with substitution variables")
    login_method = models.CharField(max_length=4, default="POST", choices=[("GET", "GET"), ("POST", "POST")])
    token_lifetime = models.PositiveIntegerField(default=3600)
    tokens_issued = models.PositiveIntegerField(default=0)
    # Canvas leaky bucket: a request costs `rate_limit_cost`; the bucket drains `rate_limit_leak_per_second`.
    rate_limit_capacity = models.FloatField(default=700)
    rate_limit_leak_per_second = models.FloatField(default=10)
    rate_limit_cost = models.FloatField(default=1)
    rate_limit_enabled = models.BooleanField(default=False)
    faults = models.JSONField(default=dict, blank=True)
    # Dynamic Registration: a tool that registered itself waits for the admin (Moodle: "Pending").
    is_enabled = models.BooleanField(default=True)
    registered_dynamically = models.BooleanField(default=False)
    tool_configuration = models.JSONField(default=dict, blank=True, help_text="What the tool posted at Dynamic Registration")
    scopes = models.JSONField(default=list, blank=True, help_text="Scopes granted; empty means every scope")
    # Platform Notification Service: notice type -> the tool's handler URL.
    notice_handlers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["platform", "client_id"], name="sandbox_registration_client_unique"),
            models.CheckConstraint(condition=Q(profile__in=Profile.values), name="sandbox_registration_profile_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.client_id}, {self.profile})"

    @property
    def allowed_redirect_uris(self) -> list[str]:
        return list(self.redirect_uris or [self.launch_url])


class SandboxDeployment(models.Model):
    """One installation of a registration (a Canvas sub-account or course install)."""

    registration = models.ForeignKey(SandboxRegistration, on_delete=models.CASCADE, related_name="deployments")
    deployment_id = models.CharField(max_length=200)
    name = models.CharField(max_length=200, default="Root account")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["registration", "deployment_id"], name="sandbox_deployment_id_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.deployment_id})"


class SandboxCourse(models.Model):
    platform = models.ForeignKey(SandboxPlatform, on_delete=models.CASCADE, related_name="courses")
    deployment = models.ForeignKey(SandboxDeployment, on_delete=models.PROTECT, related_name="courses")
    title = models.CharField(max_length=200)
    label = models.CharField(max_length=60, blank=True)
    context_id = models.CharField(max_length=100, unique=True)
    history = models.TextField(blank=True, help_text="Earlier context ids, most recent first, comma-separated")
    previous_course_ids = models.TextField(blank=True)
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.title


class SandboxUser(models.Model):
    platform = models.ForeignKey(SandboxPlatform, on_delete=models.CASCADE, related_name="users")
    sub = models.CharField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    email = models.EmailField(blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class SandboxEnrolment(models.Model):
    course = models.ForeignKey(SandboxCourse, on_delete=models.CASCADE, related_name="enrolments")
    user = models.ForeignKey(SandboxUser, on_delete=models.CASCADE, related_name="enrolments")
    role = models.CharField(max_length=20, choices=Role.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["course", "user"], name="sandbox_enrolment_unique")]

    @property
    def gradable(self) -> bool:
        return self.role in GRADABLE_ROLES


GRADABLE_ROLES = (Role.LEARNER, Role.TEST_USER)


class SandboxResourceLink(models.Model):
    course = models.ForeignKey(SandboxCourse, on_delete=models.CASCADE, related_name="resource_links")
    resource_link_id = models.CharField(max_length=100, unique=True)
    title = models.CharField(max_length=200)
    url = models.URLField(max_length=500, blank=True, help_text="target_link_uri; the registration's launch URL if empty")
    custom = models.JSONField(default=dict, blank=True)
    history = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.title


class SandboxLineItem(models.Model):
    course = models.ForeignKey(SandboxCourse, on_delete=models.CASCADE, related_name="line_items")
    resource_link = models.ForeignKey(
        SandboxResourceLink, null=True, blank=True, on_delete=models.SET_NULL, related_name="line_items"
    )
    label = models.CharField(max_length=200)
    score_maximum = models.FloatField()
    resource_id = models.CharField(max_length=200, blank=True)
    tag = models.CharField(max_length=200, blank=True)
    allowed_attempts = models.PositiveIntegerField(null=True, blank=True, help_text="Canvas: unlimited when empty")
    start_date_time = models.DateTimeField(null=True, blank=True)
    end_date_time = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(score_maximum__gt=0), name="sandbox_lineitem_max_positive")
        ]
        indexes = [models.Index(fields=["course", "id"], name="sandbox_lineitem_course_idx")]

    def __str__(self) -> str:
        return self.label


class SandboxResult(models.Model):
    """The gradebook cell of one (line item, user): the last accepted score."""

    line_item = models.ForeignKey(SandboxLineItem, on_delete=models.CASCADE, related_name="results")
    user = models.ForeignKey(SandboxUser, on_delete=models.CASCADE, related_name="results")
    score_given = models.FloatField(null=True, blank=True)
    score_maximum = models.FloatField(null=True, blank=True)
    result = models.FloatField(null=True, blank=True, help_text="Rescaled to the line item's maximum")
    activity_progress = models.CharField(max_length=20, blank=True)
    grading_progress = models.CharField(max_length=20, blank=True)
    comment = models.TextField(blank=True)
    timestamp = models.DateTimeField()
    submission_count = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["line_item", "user"], name="sandbox_result_unique")]


class SandboxToken(models.Model):
    """An access token issued by the token endpoint, with the assertion's jti (never reused)."""

    registration = models.ForeignKey(SandboxRegistration, on_delete=models.CASCADE, related_name="tokens")
    deployment_id = models.CharField(max_length=200, blank=True)
    token = models.CharField(max_length=100, unique=True)
    jti = models.CharField(max_length=200)
    scopes = models.TextField()
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["registration", "jti"], name="sandbox_token_jti_unique")]


class LaunchKind(models.TextChoices):
    RESOURCE_LINK = "LtiResourceLinkRequest"
    DEEP_LINKING = "LtiDeepLinkingRequest"


class SandboxLaunch(models.Model):
    """A login initiation the platform started; `lti_message_hint` is its uuid."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True)
    kind = models.CharField(max_length=40, choices=LaunchKind.choices)
    user = models.ForeignKey(SandboxUser, on_delete=models.CASCADE, related_name="+")
    course = models.ForeignKey(SandboxCourse, on_delete=models.CASCADE, related_name="+")
    deployment = models.ForeignKey(SandboxDeployment, on_delete=models.CASCADE, related_name="+")
    resource_link = models.ForeignKey(SandboxResourceLink, null=True, on_delete=models.CASCADE, related_name="+")
    data = models.CharField(max_length=100, blank=True, help_text="Deep linking `data` the response must echo")
    accept_multiple = models.BooleanField(default=True)
    accept_lineitem = models.BooleanField(default=True)
    response_nonce = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)


class SandboxRequestLog(models.Model):
    """What the tool sent and what the sandbox answered."""

    registration = models.ForeignKey(
        SandboxRegistration, null=True, blank=True, on_delete=models.CASCADE, related_name="log"
    )
    kind = models.CharField(max_length=40)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=1000)
    request_headers = models.JSONField(default=dict)
    request_body = models.TextField(blank=True)
    status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Empty when the connection was dropped")
    response_body = models.TextField(blank=True)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["registration", "-id"], name="sandbox_log_registration_idx")]
