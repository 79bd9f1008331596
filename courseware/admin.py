"""The catalog in the admin (edited, audited), and the learner side (read: written by the player)."""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import BooleanField, Count, ExpressionWrapper, Q
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from institutions.admin import AuditedAdminMixin

from .captions import CaptionsRefused, check_captions, check_language, needs_captions
from .models import Activity, ActivityKind, ActivityLink, Attempt, AttemptAllowance, Launch, Placement, Question


class QuestionInline(admin.StackedInline):
    model = Question
    extra = 0
    fields = ["position", "prompt", "choices", "answer"]
    verbose_name = _("question (multiple choice: choices = list, answer = right index; lab: choices = [], answer = accepted answers)")


NO_CAPTIONS = Q(kind=ActivityKind.VIDEO, captions_vtt="")
NO_CAPTIONS_WARNING = _(
    "This video has no captions: learners who are deaf or hard of hearing cannot follow it. "
    "Paste its WebVTT captions under “Captions”."
)


class ActivityForm(forms.ModelForm):
    """Captions are checked as a browser would read them, so a <track> never silently shows nothing."""

    class Meta:
        model = Activity
        fields = "__all__"
        widgets = {"captions_vtt": forms.Textarea(attrs={"rows": 8, "cols": 80, "spellcheck": "false"})}
        help_texts = {
            "captions_vtt": _("The whole .vtt file: a first line “WEBVTT”, then cues such as "
                              "“00:00:01.000 --> 00:00:04.000” and their text. Shown by the video's captions track."),
            "captions_language": _("The captions' language tag, e.g. “en”, “fr”, “pt-BR”."),
        }

    def clean_captions_vtt(self) -> str:
        try:
            return check_captions(self.cleaned_data.get("captions_vtt", ""))
        except CaptionsRefused as refusal:
            raise forms.ValidationError(str(refusal)) from None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "captions_language" in self.fields:
            self.fields["captions_language"].required = False  # empty: the model's default ("en")

    def clean_captions_language(self) -> str:
        tag = self.cleaned_data.get("captions_language") or Activity._meta.get_field("captions_language").default
        try:
            return check_language(tag)
        except CaptionsRefused as refusal:
            raise forms.ValidationError(str(refusal)) from None


class CaptionsFilter(admin.SimpleListFilter):
    title = _("captions")
    parameter_name = "captions"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("missing", _("Videos without captions")), ("present", _("Videos with captions"))]

    def queryset(self, request: HttpRequest, queryset):
        if self.value() == "missing":
            return queryset.filter(NO_CAPTIONS)
        if self.value() == "present":
            return queryset.filter(kind=ActivityKind.VIDEO).exclude(captions_vtt="")
        return queryset


@admin.register(Activity)
class ActivityAdmin(AuditedAdminMixin, admin.ModelAdmin):
    form = ActivityForm
    list_display = ["title", "kind", "section", "position", "default_points", "question_count", "captions", "is_published"]
    list_display_links = ["title"]
    list_filter = ["kind", CaptionsFilter, "is_published", "section"]
    list_select_related = ["section"]
    search_fields = ["title", "slug", "summary"]
    ordering = ["position", "id"]  # one outline: section headers and their items interleave by position
    prepopulated_fields = {"slug": ["title"]}
    show_full_result_count = False
    inlines = [QuestionInline]
    fieldsets = [
        (None, {"fields": ["title", "slug", "kind", "section", "position", "is_published"]}),
        (_("Content"), {"fields": ["summary", "body", "video_url"]}),
        (_("Captions"), {"fields": ["captions_vtt", "captions_language"], "description": _(
            "Every video needs captions (WebVTT), shown by its player; a video without them is flagged in the catalog."
        )}),
        (_("Grading"), {"fields": ["default_points"], "description": _(
            "Default points offered to instructors when they place the activity (scoreMaximum). Custom quizzes "
            "and competency assessments allow 1 attempt unless the course's instructor changes it; "
            "all other kinds allow unlimited attempts."
        )}),
    ]

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).annotate(
            _questions=Count("questions"),
            _no_captions=ExpressionWrapper(NO_CAPTIONS, output_field=BooleanField()),
        )

    @admin.display(description=_("captions"), ordering="_no_captions")
    def captions(self, activity: Activity) -> str:
        if activity.kind != ActivityKind.VIDEO:
            return "—"
        return _("⚠ missing") if activity._no_captions else _("yes")

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None):
        if request.method == "GET":
            activity = self.get_object(request, object_id)
            if activity is not None and needs_captions(activity):
                messages.warning(request, NO_CAPTIONS_WARNING)
        return super().change_view(request, object_id, form_url, extra_context)

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
