"""Grade sync in the admin: the ledger, the outbox and each exchange with the LMS."""
from __future__ import annotations

from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import DateFieldListFilter
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from lti_tool.models import LtiUser

from institutions.admin import GradePolicyForm, InstitutionAdmin
from institutions.models import Course, GradePolicy, Institution
from institutions.services import CHANGE_GRADE_POLICY_PERMISSION, change_grade_policy

from . import resync
from .admin_paging import EstimatedCountPaginator, IndexedSearchMixin
from .eligibility import ROLE_WORDS
from .models import Delivery, DeliveryExchange, ResyncJob, Result, SyncWarning


class ReadOnlyAdmin(admin.ModelAdmin):
    """Machine-written rows: staff read them; changes go through actions that audit themselves."""

    show_full_result_count = False
    paginator = EstimatedCountPaginator  # no COUNT(*) over millions of rows per page

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class DeliveryExchangeInline(admin.TabularInline):
    model = DeliveryExchange
    fields = ["attempted_at", "status_code", "outcome", "score_given", "score_maximum", "timestamp_sent", "duration_ms", "message"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["-attempted_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(IndexedSearchMixin, ReadOnlyAdmin):
    list_display = ["id", "status", "learner", "course", "activity_key", "score", "attempts", "last_status_code", "updated_at", "why"]
    # Sync health links here with these parameters. status, institution and updated_at are indexed;
    # sent_at and is_resync are not, but the pk-ordered page and the bounded count keep them cheap.
    list_filter = ["status", "is_resync", "institution", ("updated_at", DateFieldListFilter), ("sent_at", DateFieldListFilter)]
    list_select_related = ["lti_user", "course__context"]  # Course.__str__ falls back to its context
    raw_id_fields = ["result", "course", "lti_user", "line_item", "resource_link"]
    search_fields = ["=id", "=lti_user__sub", "=lti_user__email"]  # see IndexedSearchMixin
    ordering = ["-id"]
    inlines = [DeliveryExchangeInline]
    actions = ["resync_delivery", "resync_learner", "resync_activity", "resync_course"]

    def has_resync_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(resync.RESYNC_PERMISSION)

    @admin.action(description=_("Resync this grade"), permissions=["resync"])
    def resync_delivery(self, request: HttpRequest, queryset) -> HttpResponse | None:
        return self._open_resync_form(request, queryset, ["delivery"])

    @admin.action(description=_("Resync this learner's grades in its course"), permissions=["resync"])
    def resync_learner(self, request: HttpRequest, queryset) -> HttpResponse | None:
        return self._open_resync_form(request, queryset, ["institution", "course", "lti_user"])

    @admin.action(description=_("Resync this activity in its course"), permissions=["resync"])
    def resync_activity(self, request: HttpRequest, queryset) -> HttpResponse | None:
        return self._open_resync_form(request, queryset, ["institution", "course", "activity_key"])

    @admin.action(description=_("Resync this grade's whole course"), permissions=["resync"])
    def resync_course(self, request: HttpRequest, queryset) -> HttpResponse | None:
        return self._open_resync_form(request, queryset, ["institution", "course"])

    def _open_resync_form(self, request: HttpRequest, queryset, fields: list[str]) -> HttpResponse | None:
        """The resync form, its scope taken from the one selected delivery (the form previews and confirms)."""
        chosen = list(queryset[:2])
        if len(chosen) != 1:
            self.message_user(request, _("Select exactly one delivery for this action."), messages.WARNING)
            return None
        delivery = chosen[0]
        values = {
            "delivery": delivery.pk, "institution": delivery.institution_id, "course": delivery.course_id,
            "lti_user": delivery.lti_user_id, "activity_key": delivery.activity_key,
        }
        query = urlencode({name: values[name] for name in fields})
        return HttpResponseRedirect(reverse("admin:gradesync_resyncjob_resync") + "?" + query)

    @admin.display(description=_("learner"), ordering="lti_user__name")
    def learner(self, delivery: Delivery) -> str:
        return delivery.lti_user.name or delivery.lti_user.email or delivery.lti_user.sub

    @admin.display(description=_("why?"))
    def why(self, delivery: Delivery) -> str:
        return format_html('<a href="{}">{}</a>', reverse("gradesync_why_delivery", args=[delivery.pk]), _("why?"))


class LaunchRoleFilter(admin.SimpleListFilter):
    """The roles as a fixed list: Django's default for a plain CharField runs SELECT DISTINCT over every result."""

    title = _("launch role")
    parameter_name = "launch_role"

    def lookups(self, request, model_admin):
        return [(role or "none", words) for role, words in ROLE_WORDS.items()]

    def queryset(self, request, queryset):
        value = self.value()
        return queryset if value is None else queryset.filter(launch_role="" if value == "none" else value)


@admin.register(Result)
class ResultAdmin(IndexedSearchMixin, ReadOnlyAdmin):
    list_display = ["id", "activity_title", "learner", "course", "score", "completed_at", "is_eligible", "ineligible_reason", "why"]
    list_filter = ["is_eligible", LaunchRoleFilter]
    list_select_related = ["lti_user", "course__context"]
    raw_id_fields = ["lti_user", "course", "resource_link", "launched_course", "launch_deployment"]
    search_fields = ["=id", "=lti_user__sub", "=lti_user__email"]  # see IndexedSearchMixin
    ordering = ["-id"]

    @admin.display(description=_("learner"))
    def learner(self, result: Result) -> str:
        if result.lti_user is None:
            return "—"
        return result.lti_user.name or result.lti_user.email or result.lti_user.sub

    @admin.display(description=_("why?"))
    def why(self, result: Result) -> str:
        return format_html('<a href="{}">{}</a>', reverse("gradesync_why_result", args=[result.pk]), _("why?"))


@admin.register(SyncWarning)
class SyncWarningAdmin(ReadOnlyAdmin):
    list_display = ["course", "activity_key", "kind", "message", "updated_at"]
    list_select_related = ["course__context"]
    list_filter = ["kind"]


# --- Resync -----------------------------------------------------------------------------------


class ResyncForm(forms.Form):
    """A resync's scope. Narrower fields need the wider ones only when they cannot be derived."""

    institution = forms.ModelChoiceField(queryset=Institution.objects.order_by("name"), required=False)
    course = forms.IntegerField(required=False, min_value=1, label=_("Course id"))
    lti_user = forms.IntegerField(required=False, min_value=1, label=_("Learner (LTI user id)"))
    activity_key = forms.CharField(required=False, max_length=100, label=_("Activity (catalog id)"))
    delivery = forms.IntegerField(required=False, min_value=1, label=_("One delivery (id)"))
    completed_from = forms.DateTimeField(
        required=False, label=_("Results completed from (UTC)"), widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    completed_until = forms.DateTimeField(
        required=False, label=_("Results completed before (UTC)"), widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    only_changed = forms.BooleanField(required=False, label=_("Only grades that differ from the last grade sent"))

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        delivery = course = lti_user = None
        if data.get("delivery"):
            delivery = Delivery.objects.select_related("institution", "course", "lti_user").filter(pk=data["delivery"]).first()
            if delivery is None:
                raise ValidationError(_("No delivery with that id."))
        if data.get("course"):
            course = Course.objects.select_related("institution").filter(pk=data["course"]).first()
            if course is None:
                raise ValidationError(_("No course with that id."))
        if data.get("lti_user"):
            lti_user = LtiUser.objects.filter(pk=data["lti_user"]).first()
            if lti_user is None:
                raise ValidationError(_("No LTI user with that id."))
        try:
            if delivery is not None:
                scope = resync.ResyncScope.of_delivery(delivery)
            else:
                institution = data.get("institution") or (course.institution if course else None)
                if institution is None:
                    raise ValidationError(_("Choose an institution, or a course, or a delivery."))
                if course is not None and course.institution_id != institution.pk:
                    raise ValidationError(_("That course belongs to another institution."))
                if (lti_user or data.get("activity_key")) and course is None:
                    raise ValidationError(_("A learner or an activity is resynced within one course: give the course."))
                scope = resync.ResyncScope(
                    institution=institution, course=course, lti_user=lti_user, activity_key=data.get("activity_key", ""),
                    completed_from=data.get("completed_from"), completed_until=data.get("completed_until"),
                    only_changed=data.get("only_changed", False),
                )
        except resync.ResyncRefused as refusal:
            raise ValidationError(str(refusal)) from None
        data["scope"] = scope
        return data


def progress_json(job: ResyncJob) -> JsonResponse:
    return JsonResponse(resync.refresh_progress(job).as_dict())


@admin.register(ResyncJob)
class ResyncJobAdmin(ReadOnlyAdmin):
    """Resync jobs: started from the resync view (or the actions that lead there), watched, cancelled."""

    list_display = ["id", "status", "scope", "requested_by_name", "estimated", "planned", "sent", "refused", "failed", "skipped", "created_at", "finished_at"]
    list_filter = ["status"]
    list_select_related = ["institution", "course__context", "lti_user", "delivery"]
    raw_id_fields = ["institution", "course", "lti_user", "delivery", "requested_by", "requested_by_instructor"]
    ordering = ["-id"]
    fields = [
        "status", "scope", "requested_by_name", "estimated", "planned", "sent", "refused", "failed", "skipped",
        "message", "created_at", "started_at", "planned_at", "finished_at",
    ]
    readonly_fields = fields
    change_form_template = "admin/gradesync/resyncjob/change_form.html"
    change_list_template = "admin/gradesync/resyncjob/change_list.html"

    def has_resync_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(resync.RESYNC_PERMISSION)

    @admin.display(description=_("scope"))
    def scope(self, job: ResyncJob) -> str:
        return resync.ResyncScope.of_job(job).describe()

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("resync/", wrap(self.resync_view), name="gradesync_resyncjob_resync"),
            path("<int:object_id>/progress.json", wrap(self.progress_view), name="gradesync_resyncjob_progress"),
            path("<int:object_id>/cancel/", wrap(self.cancel_view), name="gradesync_resyncjob_cancel"),
            *super().get_urls(),
        ]

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra = {"can_resync": self.has_resync_permission(request), **(extra_context or {})}
        if object_id:
            job = self.get_object(request, object_id)
            if job is not None:
                extra["progress"] = resync.refresh_progress(job)
        return super().changeform_view(request, object_id, form_url, extra)

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"can_resync": self.has_resync_permission(request), **(extra_context or {})})

    def resync_view(self, request: HttpRequest) -> HttpResponse:
        """Choose a scope, see what it holds, confirm: Django's delete_selected, for a resync."""
        if not self.has_resync_permission(request):
            raise PermissionDenied
        data = request.POST if request.method == "POST" else (request.GET or None)
        form = ResyncForm(data)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Resync grades"),
            "opts": self.opts,
            "form": form,
            "has_view_permission": True,
        }
        if request.method == "POST" and form.is_valid():
            scope = form.cleaned_data["scope"]
            if request.POST.get("confirmed") == "yes":
                try:
                    with transaction.atomic():
                        job = resync.start_resync(scope=scope, acting_user=request.user)
                        self.log_addition(request, job, f"Resync requested: {scope.describe()} ({job.estimated} grades)")
                except resync.ResyncRefused as refusal:
                    self.message_user(request, str(refusal), messages.ERROR)
                else:
                    self.message_user(request, _("Resync #%(id)s queued: %(n)s grades.") % {"id": job.pk, "n": job.estimated})
                    return HttpResponseRedirect(reverse("admin:gradesync_resyncjob_change", args=[job.pk]))
            context.update(confirm=True, scope_description=scope.describe(), preview=resync.preview_resync(scope))
        return TemplateResponse(request, "admin/gradesync/resyncjob/resync.html", context)

    def progress_view(self, request: HttpRequest, object_id: int) -> JsonResponse:
        job = get_object_or_404(self.get_queryset(request), pk=object_id)
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        return progress_json(job)

    def cancel_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_resync_permission(request):
            raise PermissionDenied
        job = get_object_or_404(self.get_queryset(request), pk=object_id)
        try:
            with transaction.atomic():
                withdrawn = resync.cancel_resync(job=job, acting_user=request.user)
                self.log_change(request, job, f"Resync cancelled; {withdrawn} queued grades withdrawn")
        except resync.ResyncRefused as refusal:
            self.message_user(request, str(refusal), messages.WARNING)
        else:
            self.message_user(request, _("Resync cancelled; %s queued grades withdrawn.") % withdrawn)
        return HttpResponseRedirect(reverse("admin:gradesync_resyncjob_change", args=[job.pk]))


# --- The grade policy, with what a change would do --------------------------------------------


class PolicyChangeForm(GradePolicyForm):
    resync_affected = forms.BooleanField(
        required=False, label=_("Change and resync the affected grades"),
        help_text=_("After the change, send every grade the new policy picks differently from the last grade sent."),
    )


admin.site.unregister(Institution)


@admin.register(Institution)
class GradeSyncInstitutionAdmin(InstitutionAdmin):
    """Institutions, with grade sync's additions: what a policy change affects, and resync."""

    change_form_template = "admin/gradesync/institution/change_form.html"

    def grade_policy_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        institution = get_object_or_404(self.get_queryset(request), pk=object_id)
        if not request.user.has_perm(CHANGE_GRADE_POLICY_PERMISSION):
            raise PermissionDenied
        can_resync = request.user.has_perm(resync.RESYNC_PERMISSION)
        form = PolicyChangeForm(request.POST or None, initial={"grade_policy": institution.grade_policy})
        if not can_resync:
            del form.fields["resync_affected"]
        if request.method == "POST" and form.is_valid():
            policy = form.cleaned_data["grade_policy"]
            with transaction.atomic():
                changed = change_grade_policy(institution=institution, policy=policy, acting_user=request.user)
                job = None
                if changed:
                    self.log_change(request, institution, [{"changed": {"fields": ["grade_policy"]}}])
                    if form.cleaned_data.get("resync_affected"):
                        institution.refresh_from_db()
                        job = resync.start_resync(
                            scope=resync.ResyncScope(institution=institution, only_changed=True), acting_user=request.user
                        )
                        self.log_change(request, institution, f"Resync #{job.pk} of the grades the new policy changes")
            if not changed:
                self.message_user(request, _("The grade policy was already that; nothing changed."), messages.INFO)
                return HttpResponseRedirect(reverse("admin:institutions_institution_change", args=[institution.pk]))
            self.message_user(request, _("Grade policy changed to %s.") % GradePolicy(policy).label)
            if job is not None:
                self.message_user(request, _("Resync #%(id)s queued: %(n)s grades.") % {"id": job.pk, "n": job.estimated})
                return HttpResponseRedirect(reverse("admin:gradesync_resyncjob_change", args=[job.pk]))
            return HttpResponseRedirect(reverse("admin:institutions_institution_change", args=[institution.pk]))
        previews = [
            resync.preview_policy_change(institution=institution, policy=policy)
            for policy in GradePolicy.values
            if policy != institution.grade_policy
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": _("Change grade policy: %s") % institution,
            "institution": institution,
            "form": form,
            "opts": self.opts,
            "original": institution,
            "has_view_permission": True,
            "previews": [(GradePolicy(p.policy).label, p) for p in previews],
            "can_resync": can_resync,
        }
        return TemplateResponse(request, "admin/gradesync/grade_policy.html", context)
