"""Grade sync in the admin: the ledger, the outbox and each exchange with the LMS."""
from __future__ import annotations

from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import DateFieldListFilter, helpers
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext, gettext_lazy as _
from lti_tool.models import LtiUser

from institutions.admin import GradePolicyForm, InstitutionAdmin
from institutions.models import Course, GradePolicy, Institution
from institutions.redaction import redact
from institutions.services import CHANGE_GRADE_POLICY_PERMISSION, change_grade_policy

from . import diagnostics, resync
from .admin_paging import EstimatedCountPaginator, IndexedSearchMixin, LargeTableChangeList
from .admin_support import why_url
from .eligibility import ROLE_WORDS
from .models import Delivery, DeliveryExchange, ResyncJob, Result, SyncWarning


class ReadOnlyAdmin(admin.ModelAdmin):
    """Machine-written rows: staff read them; changes go through actions that audit themselves.

    Subclasses list in `sortable_by` only the columns an index can order: sorting a million rows
    by anything else (a learner's name, a score) takes seconds.
    """

    show_full_result_count = False
    paginator = EstimatedCountPaginator  # no COUNT(*) over millions of rows per page
    list_prefetch_related: list[str] = []  # see LargeTableChangeList; list_select_related then stays empty

    def get_changelist(self, request, **kwargs):
        return LargeTableChangeList

    def action_checkbox(self, obj) -> str:
        """Django's row checkbox, written directly: Django renders it through the form widget
        templates, once per row, which was a fifth of a 100-row page's time."""
        label = format_html(gettext("Select this object for an action - {}"), str(obj))
        return format_html('<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
                           helpers.ACTION_CHECKBOX_NAME, obj.pk, label)

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class DeliveryExchangeInline(admin.TabularInline):
    model = DeliveryExchange
    fields = ["attempted_at", "status_code", "outcome", "score_given", "score_maximum", "timestamp_sent", "duration_ms", "lms_message"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["-attempted_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description=_("message"))
    def lms_message(self, exchange: DeliveryExchange) -> str:
        return redact(exchange.message)  # the LMS's answer, with any token it echoed masked


def learner_link(lti_user: LtiUser | None) -> str:
    """The learner's name (or email, or LMS user id), linked to their page (LearnerAdmin)."""
    if lti_user is None:
        return "—"
    return format_html('<a href="{}">{}</a>', reverse("admin:lti_tool_ltiuser_change", args=[lti_user.pk]),
                       lti_user.name or lti_user.email or lti_user.sub)


@admin.register(Delivery)
class DeliveryAdmin(IndexedSearchMixin, ReadOnlyAdmin):
    list_display = ["id", "status", "learner", "course", "activity_key", "score", "attempts", "last_status_code", "updated_at", "why"]
    # Sync health links here with these parameters. Each filter has an index (gradesync 0005 adds
    # is_resync's and sent_at's), so a value that matches few rows is not a scan of the outbox.
    list_filter = ["status", "is_resync", "institution", ("updated_at", DateFieldListFilter), ("sent_at", DateFieldListFilter)]
    list_select_related = ()
    list_prefetch_related = ["lti_user", "course__context"]  # Course.__str__ falls back to its context
    raw_id_fields = ["result", "course", "lti_user", "line_item", "resource_link"]
    search_fields = ["=id", "=lti_user__sub", "=lti_user__email"]  # see IndexedSearchMixin
    search_help_text = _("A delivery id, or a learner's exact LMS user id or email.")
    ordering = ["-id"]
    sortable_by = ["id", "course", "updated_at"]  # the pk, delivery_course_user_act_idx, delivery_window_idx
    inlines = [DeliveryExchangeInline]
    actions = ["resync_delivery", "resync_learner", "resync_activity", "resync_course"]
    readonly_fields = ["lms_last_message"]

    def get_fields(self, request: HttpRequest, obj=None) -> list:
        # The LMS's last answer is shown through redact, in the stored field's place.
        fields = [name for name in super().get_fields(request, obj) if name != "lms_last_message"]
        return ["lms_last_message" if name == "last_message" else name for name in fields]

    @admin.display(description=_("last message"))
    def lms_last_message(self, delivery: Delivery) -> str:
        return redact(delivery.last_message)

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

    @admin.display(description=_("learner"))
    def learner(self, delivery: Delivery) -> str:
        return learner_link(delivery.lti_user)

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
    list_select_related = ()
    list_prefetch_related = ["lti_user", "course__context"]
    raw_id_fields = ["lti_user", "course", "resource_link", "launched_course", "launch_deployment"]
    search_fields = ["=id", "=lti_user__sub", "=lti_user__email"]  # see IndexedSearchMixin
    search_help_text = _("A result id, or a learner's exact LMS user id or email.")
    ordering = ["-id"]
    sortable_by = ["id", "course"]  # the pk, result_course_user_act_idx

    @admin.display(description=_("learner"))
    def learner(self, result: Result) -> str:
        return learner_link(result.lti_user)

    @admin.display(description=_("why?"))
    def why(self, result: Result) -> str:
        return format_html('<a href="{}">{}</a>', reverse("gradesync_why_result", args=[result.pk]), _("why?"))


@admin.register(SyncWarning)
class SyncWarningAdmin(ReadOnlyAdmin):
    list_display = ["course", "activity_key", "kind", "message", "updated_at"]
    list_select_related = ["course__context"]
    list_filter = ["kind"]


# --- Learners ---------------------------------------------------------------------------------


def changelist_url(name: str, **filters: object) -> str:
    return reverse(f"admin:gradesync_{name}_changelist") + "?" + urlencode(filters)


if admin.site.is_registered(LtiUser):  # django-lti registers none today; ours replaces any it adds
    admin.site.unregister(LtiUser)


@admin.register(LtiUser)
class LearnerAdmin(ReadOnlyAdmin):
    """Learners (django-lti's LTI users), read-only: support finds a student by LMS user id, email
    or name and, from their page, reaches "why didn't this grade sync?" for each (course, activity)
    and their deliveries and results.

    The search is `diagnostics.learners_matching` (each test on an index of its own); the list is
    paged like the outbox's (no COUNT(*) of a large table) and sorts by id only.
    """

    list_display = ["id", "name", "email", "sub", "registration", "datetime_created", "grades"]
    list_display_links = ["id", "name"]
    list_select_related = ["registration"]
    list_filter = ["registration"]
    search_fields = ["=sub", "=email", "name"]  # see get_search_results
    search_help_text = _("A learner's LMS user id (sub), email, part of their name (3 letters or more), or id.")
    ordering = ["-id"]
    sortable_by = ["id"]
    fields = [
        "name", "given_name", "family_name", "email", "sub", "lti1p1_id_on_platform", "registration",
        "auth_user", "picture_url", "datetime_created", "datetime_modified",
    ]
    readonly_fields = fields
    change_form_template = "admin/gradesync/learner/change_form.html"
    learner_matches = 1000

    def get_search_results(self, request, queryset, search_term):
        term = (search_term or "").strip()
        if not term:
            return queryset, False
        learners = diagnostics.learners_matching(term)
        if term.lstrip("#").isdigit():
            learners = learners | LtiUser.objects.filter(pk=int(term.lstrip("#")))
        # Values, not a subquery: see IndexedSearchMixin. The newest matches when a name is common.
        ids = list(learners.order_by("-pk").values_list("pk", flat=True)[: self.learner_matches])
        return queryset.filter(pk__in=ids), False

    @admin.display(description=_("grades"))
    def grades(self, lti_user: LtiUser) -> str:
        return format_html(
            '<a href="{}">{}</a> · <a href="{}">{}</a>',
            changelist_url("delivery", lti_user__id__exact=lti_user.pk), _("deliveries"),
            changelist_url("result", lti_user__id__exact=lti_user.pk), _("results"),
        )

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra = dict(extra_context or {})
        lti_user = self.get_object(request, object_id) if object_id else None
        if lti_user is not None:
            grades, more = diagnostics.learner_grades(lti_user)
            extra.update(
                learner_grades=[
                    (grade, why_url(lti_user_id=lti_user.pk, course_id=grade.course_id, activity_key=grade.activity_key),
                     changelist_url("delivery", lti_user__id__exact=lti_user.pk, course__id__exact=grade.course_id,
                                    activity_key=grade.activity_key),
                     changelist_url("result", lti_user__id__exact=lti_user.pk, course__id__exact=grade.course_id,
                                    activity_key=grade.activity_key))
                    for grade in grades
                ],
                more_grades=more,
                deliveries_url=changelist_url("delivery", lti_user__id__exact=lti_user.pk),
                results_url=changelist_url("result", lti_user__id__exact=lti_user.pk),
                max_grades=diagnostics.MAX_LEARNER_GRADES,
            )
        return super().changeform_view(request, object_id, form_url, extra)


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
    return JsonResponse(resync.polled_progress(job).as_dict())


@admin.register(ResyncJob)
class ResyncJobAdmin(ReadOnlyAdmin):
    """Resync jobs: started from the resync view (or the actions that lead there), watched, cancelled."""

    list_display = ["id", "status", "scope", "requested_by_name", "estimated", "planned", "sent", "refused", "failed", "skipped", "created_at", "finished_at"]
    list_filter = ["status"]
    list_select_related = ["institution", "course__context", "lti_user", "delivery"]
    raw_id_fields = ["institution", "course", "lti_user", "delivery", "requested_by", "requested_by_instructor"]
    ordering = ["-id"]
    sortable_by = ["id", "created_at"]  # the pk, resyncjob_created_idx
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
