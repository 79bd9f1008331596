"""The catalog in the admin (edited, audited), and the learner side (read: written by the player)."""
from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from institutions.admin import AuditedAdminMixin

from .models import Activity, ActivityKind, ActivityLink, Attempt, AttemptAllowance, Launch, Placement, Question


class QuestionInline(admin.StackedInline):
    model = Question
    extra = 0
    fields = ["position", "prompt", "choices", "answer"]
    verbose_name = _("question (multiple choice: choices = list, answer = right index; lab: choices = [], answer = accepted answers)")


@admin.register(Activity)
class ActivityAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["title", "kind", "section", "position", "default_points", "question_count", "is_published"]
    list_display_links = ["title"]
    list_filter = ["kind", "is_published", "section"]
    list_select_related = ["section"]
    search_fields = ["title", "slug", "summary"]
    ordering = ["position", "id"]  # one outline: section headers and their items interleave by position
    prepopulated_fields = {"slug": ["title"]}
    show_full_result_count = False
    inlines = [QuestionInline]
    fieldsets = [
        (None, {"fields": ["title", "slug", "kind", "section", "position", "is_published"]}),
        (_("Content"), {"fields": ["summary", "body", "video_url"]}),
        (_("Grading"), {"fields": ["default_points"], "description": _(
            "Default points offered to instructors when they place the activity (scoreMaximum). Custom quizzes "
            "and competency assessments allow 1 attempt unless the course's instructor changes it; "
            "all other kinds allow unlimited attempts."
        )}),
    ]

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).annotate(_questions=Count("questions"))

    @admin.display(description=_("questions"), ordering="_questions")
    def question_count(self, activity: Activity) -> int | str:
        return activity._questions if activity.kind != ActivityKind.SECTION_HEADER else "—"


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by launches and the player: staff read them here, never edit them."""

    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Placement)
class PlacementAdmin(ReadOnlyAdmin):
    list_display = ["activity", "course", "graded", "score_maximum", "placed_by", "created_at"]
    list_filter = ["graded"]
    list_select_related = ["activity", "course__context", "placed_by"]
    raw_id_fields = ["course", "activity", "deployment", "placed_by"]
    search_fields = ["activity__title", "course__title"]
    date_hierarchy = "created_at"


@admin.register(ActivityLink)
class ActivityLinkAdmin(ReadOnlyAdmin):
    list_display = ["activity", "course", "resource_link_id_on_platform", "graded", "created_at"]
    list_filter = ["graded"]
    list_select_related = ["activity", "course__context", "resource_link"]
    raw_id_fields = ["resource_link", "course", "activity", "placement"]
    search_fields = ["activity__title", "course__title", "resource_link__id_on_platform"]

    @admin.display(description=_("resource link"), ordering="resource_link__id_on_platform")
    def resource_link_id_on_platform(self, link: ActivityLink) -> str:
        return link.resource_link.id_on_platform


@admin.register(Launch)
class LaunchAdmin(ReadOnlyAdmin):
    list_display = ["launched_at", "lti_user", "course", "role", "message_type"]
    list_filter = ["role", "message_type"]
    list_select_related = ["lti_user", "course__context"]
    raw_id_fields = ["lti_user", "course", "deployment", "resource_link"]
    search_fields = ["lti_user__name", "lti_user__email", "lti_user__sub", "course__title"]
    date_hierarchy = "launched_at"


@admin.register(Attempt)
class AttemptAdmin(ReadOnlyAdmin):
    list_display = ["activity", "number", "who", "course", "started_at", "completed_at", "score", "eligible", "ineligible_reason"]
    list_filter = ["eligible", "activity__kind"]
    list_select_related = ["activity", "course__context", "lti_user", "auth_user"]
    raw_id_fields = ["activity", "course", "activity_link", "lti_user", "auth_user", "launch"]
    search_fields = ["activity__title", "lti_user__name", "lti_user__email", "auth_user__username", "course__title"]
    date_hierarchy = "started_at"

    @admin.display(description=_("user"))
    def who(self, attempt: Attempt) -> str:
        if attempt.lti_user_id:
            return str(attempt.lti_user)
        return f"{attempt.auth_user} (direct login)" if attempt.auth_user_id else "—"


@admin.register(AttemptAllowance)
class AttemptAllowanceAdmin(ReadOnlyAdmin):
    """Set by instructors on their scheduling page (from an LTI launch); read here."""

    list_display = ["activity", "course", "allowed", "set_by", "updated_at"]
    list_select_related = ["activity", "course__context", "set_by"]
    raw_id_fields = ["course", "activity", "set_by"]
    search_fields = ["activity__title", "course__title"]

    @admin.display(description=_("attempts allowed"), ordering="attempts_allowed")
    def allowed(self, allowance: AttemptAllowance) -> str:
        return str(allowance.attempts_allowed) if allowance.attempts_allowed is not None else _("Unlimited")
