"""Institutions (grade policy, their deployments) and their courses (dates) in the admin."""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from .. import services
from ..models import (
    Course, CourseDatesSource, DeploymentOwnership, GradePolicy, Institution,
)
from .audit_trail import AuditedAdminMixin, audit_history_html


# --- Institutions -----------------------------------------------------------------------------


class DeploymentOwnershipInline(admin.TabularInline):
    model = DeploymentOwnership
    extra = 0
    fields = ["deployment", "deployment_status", "assigned_at", "assigned_by"]
    readonly_fields = ["deployment", "deployment_status", "assigned_at", "assigned_by"]
    can_delete = False
    verbose_name_plural = _("Deployments (assign new ones from the LTI deployments list)")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        return super().get_queryset(request).select_related("deployment__registration", "assigned_by")

    @admin.display(description=_("status"))
    def deployment_status(self, ownership: DeploymentOwnership) -> str:
        return _("active") if ownership.deployment.is_active else _("inactive")


class GradePolicyForm(forms.Form):
    grade_policy = forms.ChoiceField(choices=GradePolicy.choices, widget=forms.RadioSelect, label=_("Grade policy"))


class InstitutionForm(forms.ModelForm):
    class Meta:
        model = Institution
        fields = ["name", "slug", "is_active"]

    def clean_slug(self) -> str:
        # Slugs are stored lower-case and unique in any case (the institution_slug_unique_ci constraint).
        slug = (self.cleaned_data.get("slug") or "").lower()
        existing = Institution.objects.filter(slug__iexact=slug).exclude(pk=self.instance.pk).first()
        if existing is not None:
            raise ValidationError(
                _("An institution with this slug already exists: %(name)s (“%(slug)s”; slugs ignore case).")
                % {"slug": existing.slug, "name": existing}
            )
        return slug


@admin.register(Institution)
class InstitutionAdmin(AuditedAdminMixin, admin.ModelAdmin):
    form = InstitutionForm
    list_display = ["name", "slug", "grade_policy", "is_active", "deployment_count", "course_count", "created_at"]
    list_filter = ["grade_policy", "is_active"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [DeploymentOwnershipInline]
    # The grade policy is changed only through its own view, as Django does for passwords.
    readonly_fields = ["grade_policy_display", "courses_link", "grade_policy_history", "audit_link"]
    change_form_template = "admin/institutions/institution/change_form.html"

    def get_fieldsets(self, request: HttpRequest, obj: Institution | None = None) -> list:
        main = ["name", "slug", "is_active"]
        if obj is None:
            return [(None, {"fields": main})]
        return [
            (None, {"fields": main}),
            (_("Grade policy"), {"fields": ["grade_policy_display", "grade_policy_history"]}),
            (_("Courses and history"), {"fields": ["courses_link", "audit_link"]}),
        ]

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(_deployments=Count("deployments", distinct=True), _courses=Count("courses", distinct=True))
        )

    @admin.display(description=_("deployments"), ordering="_deployments")
    def deployment_count(self, institution: Institution) -> int:
        return institution._deployments

    @admin.display(description=_("courses"), ordering="_courses")
    def course_count(self, institution: Institution) -> int:
        return institution._courses

    @admin.display(description=_("grade policy"))
    def grade_policy_display(self, institution: Institution) -> str:
        return format_html("<strong>{}</strong>", institution.get_grade_policy_display())

    @admin.display(description=_("policy changes"))
    def grade_policy_history(self, institution: Institution) -> str:
        entries = list(institution.audit_entries.filter(action="grade_policy.changed")[:20])
        return audit_history_html(entries)

    @admin.display(description=_("courses"))
    def courses_link(self, institution: Institution) -> str:
        url = reverse("admin:institutions_course_changelist") + f"?institution__id__exact={institution.pk}"
        return format_html('<a href="{}">{} →</a>', url, _("%(n)s courses") % {"n": institution.courses.count()})

    @admin.display(description=_("all staff changes"))
    def audit_link(self, institution: Institution) -> str:
        url = reverse("admin:institutions_auditentry_changelist") + f"?institution__id__exact={institution.pk}"
        return format_html('<a href="{}">{} →</a>', url, _("Audit trail"))

    def get_urls(self) -> list:
        return [
            path(
                "<path:object_id>/grade-policy/",
                self.admin_site.admin_view(self.grade_policy_view),
                name="institutions_institution_grade_policy",
            ),
            *super().get_urls(),
        ]

    def grade_policy_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        institution = get_object_or_404(self.get_queryset(request), pk=object_id)
        if not request.user.has_perm(services.CHANGE_GRADE_POLICY_PERMISSION):
            raise PermissionDenied
        form = GradePolicyForm(request.POST or None, initial={"grade_policy": institution.grade_policy})
        if request.method == "POST" and form.is_valid():
            changed = services.change_grade_policy(
                institution=institution, policy=form.cleaned_data["grade_policy"], acting_user=request.user
            )
            if changed:
                self.log_change(request, institution, [{"changed": {"fields": ["grade_policy"]}}])
                self.message_user(request, _("Grade policy changed to %s.") % GradePolicy(form.cleaned_data["grade_policy"]).label)
            else:
                self.message_user(request, _("The grade policy was already that; nothing changed."), messages.INFO)
            return HttpResponseRedirect(reverse("admin:institutions_institution_change", args=[institution.pk]))
        return TemplateResponse(request, "admin/institutions/grade_policy.html", self.grade_policy_context(request, institution, form))

    def grade_policy_context(self, request: HttpRequest, institution: Institution, form) -> dict:
        """What every grade policy page shows (grade sync's adds what a change would do)."""
        return {
            **self.admin_site.each_context(request),
            "title": _("Change grade policy: %s") % institution,
            "institution": institution,
            "form": form,
            "opts": self.opts,
            "original": institution,
            "has_view_permission": True,
        }


# --- Courses, keys and the audit trail --------------------------------------------------------


class CourseForm(forms.ModelForm):
    class Meta:
        model = Course
        fields = ["starts_at", "ends_at"]

    def clean(self) -> dict:
        cleaned = super().clean()
        starts, ends = cleaned.get("starts_at"), cleaned.get("ends_at")
        if starts and ends and ends < starts:
            raise ValidationError(_("The course cannot end before it starts."))
        return cleaned


@admin.register(Course)
class CourseAdmin(AuditedAdminMixin, admin.ModelAdmin):
    form = CourseForm
    list_display = ["title", "institution", "context_id", "deployment", "starts_at", "ends_at", "dates_source"]
    list_filter = ["institution", "dates_source"]
    list_select_related = ["institution", "context", "deployment__registration"]
    search_fields = ["title", "context__id_on_platform"]
    fields = ["title", "institution", "context", "deployment", "starts_at", "ends_at", "dates_source",
              "lineage", "copies", "copy_notices"]
    readonly_fields = ["title", "institution", "context", "deployment", "dates_source", "lineage", "copies", "copy_notices"]
    show_full_result_count = False
    ordering = ["-id"]
    COPIES_SHOWN = 20

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # courses come from LMS launches

    @admin.display(description=_("copied from"))
    def lineage(self, course: Course) -> str:
        """The source course (a link) and what told us: the launch's history or the LMS's copy notice."""
        source = course.copied_from
        if source is None:
            return _("Not a copy of a course we know (no copy history or copy notice named one).")
        return format_html(
            '<a href="{}">{}</a> ({}) — {} {}',
            reverse("admin:institutions_course_change", args=[source.pk]), source, source.context.id_on_platform,
            _("found by"), course.get_copied_via_display() or _("unknown"),
        )

    @admin.display(description=_("copies"))
    def copies(self, course: Course) -> str:
        copies = list(course.copies.select_related("context").order_by("-id")[: self.COPIES_SHOWN + 1])
        if not copies:
            return _("No copies of this course have launched yet.")
        items = format_html_join(
            "", '<li><a href="{}">{}</a> ({}) — {} {}</li>',
            (
                (reverse("admin:institutions_course_change", args=[copy.pk]), copy, copy.context.id_on_platform,
                 _("found by"), copy.get_copied_via_display())
                for copy in copies[: self.COPIES_SHOWN]
            ),
        )
        more = format_html("<li>{}</li>", _("… and more")) if len(copies) > self.COPIES_SHOWN else ""
        return format_html('<ul class="course-copies">{}{}</ul>', items, more)

    @admin.display(description=_("copy notices from the LMS"))
    def copy_notices(self, course: Course) -> str:
        notices = list(course.copy_notices.order_by("-received_at")[:5])
        if not notices:
            return "—"
        return format_html_join(
            "", "<div>{}: {} ← {}</div>",
            ((notice.received_at.strftime("%Y-%m-%d %H:%M"), notice.context_id_on_platform,
              ", ".join(notice.origin_context_ids) or "?") for notice in notices),
        )

    @admin.display(description=_("LMS course id"), ordering="context__id_on_platform")
    def context_id(self, course: Course) -> str:
        return course.context.id_on_platform

    def save_model(self, request: HttpRequest, obj: Course, form: forms.ModelForm, change: bool) -> None:
        if {"starts_at", "ends_at"} & set(form.changed_data):
            obj.dates_source = CourseDatesSource.SUPPORT
        super().save_model(request, obj, form, change)
