"""Grade sync's resync in the admin: the form that finds a scope by name (autocompletes scoped to the
institution), the preview and the job's page with its progress, and the grade policy change that
offers to resync what it changes. Registered with the admin when `gradesync.admin` loads.
"""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.autocomplete import AutocompleteJsonView
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext, gettext_lazy as _, ngettext
from lti_tool.models import LtiUser

from institutions.admin import GradePolicyForm, InstitutionAdmin
from institutions.local_time import local_time
from institutions.models import Course, GradePolicy, Institution
from institutions.services import CHANGE_GRADE_POLICY_PERMISSION

from . import resync
from .admin import ReadOnlyAdmin
from .admin_links import resync_url
from .models import Delivery, ResyncJob, Result


# --- Resync -----------------------------------------------------------------------------------


AUTOCOMPLETE_WIDTH = "min(36em, 100%)"  # wide enough for "name <email> · LMS user id", and no sideways scroll


def with_resync_script(media: forms.Media) -> forms.Media:
    """Django's autocomplete media, then our script, in one list: Media orders files only within a list, and
    the script needs select2 and django.jQuery loaded before it."""
    return forms.Media(js=[*media._js, "gradesync/resync_form.js"], css=media._css)


class ScopedAutocomplete(AutocompleteSelect):
    """Django's autocomplete widget, asking the resync form's own view, which answers only within the
    institution (and course) chosen above it: `gradesync/resync_form.js` sends them with each request."""

    def get_url(self) -> str:
        return reverse("admin:gradesync_resyncjob_autocomplete")

    def build_attrs(self, base_attrs, extra_attrs=None):
        attrs = super().build_attrs(base_attrs, extra_attrs)
        # Not "admin-autocomplete": Django's autocomplete.js would start it without the institution.
        attrs["class"] = attrs["class"].replace("admin-autocomplete", "resync-autocomplete")
        attrs["data-width"] = AUTOCOMPLETE_WIDTH
        return attrs

    @property
    def media(self) -> forms.Media:
        return with_resync_script(super().media)


class ActivityAutocomplete(forms.Select):
    """The course's activities by title, from the resync form's activity view (same script as above)."""

    def __init__(self, attrs=None) -> None:
        super().__init__(attrs)
        self.title = ""

    def build_attrs(self, base_attrs, extra_attrs=None):
        attrs = super().build_attrs(base_attrs, extra_attrs)
        attrs.update({
            "class": "resync-autocomplete", "data-ajax--url": reverse("admin:gradesync_resyncjob_activities"),
            "data-ajax--cache": "true", "data-ajax--delay": 250, "data-ajax--type": "GET",
            "data-theme": "admin-autocomplete", "data-allow-clear": "true", "data-placeholder": "",
            "data-width": AUTOCOMPLETE_WIDTH,
        })
        return attrs

    def optgroups(self, name, value, attrs=None):
        choices = [("", "")] + [(key, self.title or key) for key in value if key]
        self.choices = choices
        return super().optgroups(name, value, attrs)

    @property
    def media(self) -> forms.Media:
        return with_resync_script(AutocompleteSelect(ResyncJob._meta.get_field("course"), admin.site).media)


def learner_label(lti_user: LtiUser) -> str:
    """A learner as support knows them: name, email, LMS user id."""
    parts = [lti_user.name or lti_user.email or lti_user.sub]
    if lti_user.name and lti_user.email:
        parts.append(f"<{lti_user.email}>")
    parts.append(f"· {lti_user.sub}")
    return " ".join(parts)


def course_label(course: Course) -> str:
    return f"{course.title or course.context.title or course.context.id_on_platform} ({course.context.id_on_platform})"


class CourseChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Course) -> str:
        return course_label(obj)


class LearnerChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: LtiUser) -> str:
        return learner_label(obj)


class ResyncForm(forms.Form):
    """A resync's scope, chosen by name: the institution, then a course, a learner, an activity in it.

    The course, learner and activity lists come from the form's own autocomplete views, within the chosen
    institution (`ResyncAutocompleteView`, `activities_view`); posted values are checked again here, so another
    institution's course, or a learner or activity with no grade in the course, is refused. A single delivery
    arrives only from a link (the delivery's page or list), never typed.
    """

    institution = forms.ModelChoiceField(queryset=Institution.objects.order_by("name"), required=False)
    course = CourseChoiceField(
        queryset=Course.objects.select_related("context", "institution"), required=False,
        widget=ScopedAutocomplete(ResyncJob._meta.get_field("course"), admin.site),
        label=_("Course"), help_text=_("Type part of its title or its LMS course (context) id."),
    )
    lti_user = LearnerChoiceField(
        queryset=LtiUser.objects.all(), required=False,
        widget=ScopedAutocomplete(ResyncJob._meta.get_field("lti_user"), admin.site),
        label=_("Learner"), help_text=_("In the course: type part of their name, email or LMS user id."),
    )
    activity_key = forms.CharField(
        required=False, max_length=100, widget=ActivityAutocomplete(), label=_("Activity"),
        help_text=_("In the course: type part of its title."),
    )
    delivery = forms.ModelChoiceField(
        queryset=Delivery.objects.select_related("institution", "course__context", "lti_user"), required=False,
        widget=forms.HiddenInput,
    )
    completed_from = forms.DateTimeField(
        required=False, label=_("Results completed from (UTC)"), widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    completed_until = forms.DateTimeField(
        required=False, label=_("Results completed before (UTC)"), widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    only_changed = forms.BooleanField(required=False, label=_("Only grades that differ from the last grade sent"))

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The chosen activity is shown by its title, as the autocomplete showed it.
        key = self["activity_key"].value()
        if key and isinstance(key, str) and len(key) <= 100:
            course = self["course"].value()
            course = Course.objects.filter(pk=course).first() if str(course or "").isdigit() else None
            self.fields["activity_key"].widget.title = resync.activity_title(course=course, activity_key=key)

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        delivery, course, lti_user = data.get("delivery"), data.get("course"), data.get("lti_user")
        activity_key = data.get("activity_key", "")
        try:
            if delivery is not None:
                scope = resync.ResyncScope.of_delivery(delivery)
            else:
                institution = data.get("institution") or (course.institution if course else None)
                if institution is None:
                    raise ValidationError(_("Choose an institution, or a course, or a delivery."))
                if course is not None and course.institution_id != institution.pk:
                    raise ValidationError(_("That course is not one of %(institution)s's courses.") % {"institution": institution})
                if (lti_user or activity_key) and course is None:
                    raise ValidationError(_("A learner or an activity is resynced within one course: choose the course."))
                if lti_user is not None and not Result.objects.filter(course=course, lti_user=lti_user).exists():
                    raise ValidationError(_("That learner has no grades in this course."))
                if activity_key and not Result.objects.filter(course=course, activity_key=activity_key).exists():
                    raise ValidationError(_("That activity has no grades in this course."))
                scope = resync.ResyncScope(
                    institution=institution, course=course, lti_user=lti_user, activity_key=activity_key,
                    completed_from=data.get("completed_from"), completed_until=data.get("completed_until"),
                    only_changed=data.get("only_changed", False),
                )
        except resync.ResyncRefused as refusal:
            raise ValidationError(str(refusal)) from None
        data["scope"] = scope
        return data


def _scope_query(query) -> tuple[Institution, Course | None, LtiUser | None]:
    """The institution, course and learner an autocomplete request names; ValidationError when malformed or unknown."""
    values = {}
    for name in ("institution", "course", "lti_user"):
        raw = query.get(name, "")
        if raw and (not raw.isdigit() or len(raw) > 12):
            raise ValidationError(_("The %(name)s is not an id.") % {"name": name})
        values[name] = int(raw) if raw else None
    if values["institution"] is None:
        raise ValidationError(_("Choose the institution first."))
    institution = Institution.objects.filter(pk=values["institution"]).first()
    if institution is None:
        raise ValidationError(_("No such institution."))
    course = lti_user = None
    if values["course"] is not None:
        # Another institution's course is "no such course": the same answer as one that does not exist.
        course = Course.objects.filter(pk=values["course"], institution=institution).first()
        if course is None:
            raise ValidationError(_("No such course in this institution."))
    if values["lti_user"] is not None:
        lti_user = LtiUser.objects.filter(pk=values["lti_user"]).first()
    return institution, course, lti_user


AUTOCOMPLETE_TERM_MAX = 100


class ResyncAutocompleteView(AutocompleteJsonView):
    """Django's autocomplete, for the resync form's course and learner only, within the chosen institution.

    Courses are searched with CourseAdmin's own search (title, LMS context id); learners within the chosen
    course by part of their name, email or LMS user id (`resync.learners_to_resync`). Malformed requests get a
    400 with the reason; nothing is written.
    """

    def get(self, request, *args, **kwargs):
        if not request.user.has_perm(resync.RESYNC_PERMISSION):
            raise PermissionDenied
        if request.GET.get("app_label") != "gradesync" or request.GET.get("model_name") != "resyncjob" or (
            request.GET.get("field_name") not in ("course", "lti_user")
        ):
            return JsonResponse({"error": gettext("Only the resync form's course and learner are looked up here.")}, status=400)
        if len(request.GET.get("term", "")) > AUTOCOMPLETE_TERM_MAX:
            return JsonResponse({"error": gettext("Type at most 100 characters.")}, status=400)
        try:
            self.institution, self.course, self.lti_user = _scope_query(request.GET)
        except ValidationError as error:
            return JsonResponse({"error": " ".join(error.messages)}, status=400)
        if request.GET["field_name"] == "lti_user" and self.course is None:
            return JsonResponse({"error": gettext("Choose the course first.")}, status=400)
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        if self.source_field.name == "course":
            courses = resync.courses_to_resync(institution=self.institution, lti_user=self.lti_user)
            courses, _distinct = self.model_admin.get_search_results(self.request, courses, self.term)
            return courses.order_by("title", "pk")
        return resync.learners_to_resync(course=self.course, term=self.term)

    def serialize_result(self, obj, to_field_name):
        label = course_label(obj) if isinstance(obj, Course) else learner_label(obj)
        return {"id": str(obj.pk), "text": label}


ACTIVITIES_PER_PAGE = 20


def refusal_html(refusal: resync.ResyncRefused) -> str:
    """A refusal's words, with a link to the job in the way when it names one."""
    if refusal.job_id is None:
        return str(refusal)
    return format_html('{} <a href="{}">{}</a>', str(refusal),
                       reverse("admin:gradesync_resyncjob_change", args=[refusal.job_id]),
                       _("Open resync #%(id)s") % {"id": refusal.job_id})


def progress_json(job: ResyncJob) -> JsonResponse:
    return JsonResponse(resync.polled_progress(job).as_dict())


@admin.register(ResyncJob)
class ResyncJobAdmin(ReadOnlyAdmin):
    """Resync jobs: started from the resync view (or the actions that lead there), watched, cancelled."""

    list_display = ["id", "status", "scope", "requested_by_name", "estimated", "planned", "sent", "refused", "failed", "skipped", "created", "finished"]
    list_filter = ["status"]
    list_select_related = ["institution", "course__context", "lti_user", "delivery"]
    raw_id_fields = ["institution", "course", "lti_user", "delivery", "requested_by", "requested_by_instructor"]
    ordering = ["-id"]
    sortable_by = ["id", "created"]  # the pk, resyncjob_created_idx
    fields = [
        "status", "scope", "requested_by_name", "estimated", "planned", "sent", "refused", "failed", "skipped",
        "message", "created", "started", "planned_at_time", "finished",
    ]
    readonly_fields = fields
    change_form_template = "admin/gradesync/resyncjob/change_form.html"
    change_list_template = "admin/gradesync/resyncjob/change_list.html"

    def has_resync_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(resync.RESYNC_PERMISSION)

    @admin.display(description=_("scope"))
    def scope(self, job: ResyncJob) -> str:
        return resync.ResyncScope.of_job(job).describe()

    # Times to the second, in the staff member's zone, UTC on hover.
    @admin.display(description=_("created at"), ordering="created_at")
    def created(self, job: ResyncJob) -> str:
        return local_time(job.created_at)

    @admin.display(description=_("started at"))
    def started(self, job: ResyncJob) -> str:
        return local_time(job.started_at)

    @admin.display(description=_("planned at"))
    def planned_at_time(self, job: ResyncJob) -> str:
        return local_time(job.planned_at)

    @admin.display(description=_("finished at"))
    def finished(self, job: ResyncJob) -> str:
        return local_time(job.finished_at)

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("resync/", wrap(self.resync_view), name="gradesync_resyncjob_resync"),
            path("resync/autocomplete/", wrap(ResyncAutocompleteView.as_view(admin_site=self.admin_site)),
                 name="gradesync_resyncjob_autocomplete"),
            path("resync/activities/", wrap(self.activities_view), name="gradesync_resyncjob_activities"),
            path("<int:object_id>/progress.json", wrap(self.progress_view), name="gradesync_resyncjob_progress"),
            path("<int:object_id>/cancel/", wrap(self.cancel_view), name="gradesync_resyncjob_cancel"),
            *super().get_urls(),
        ]

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra = {"can_resync": self.has_resync_permission(request), **(extra_context or {})}
        if object_id:
            job = self.get_object(request, object_id)
            if job is not None:
                extra["progress"] = resync.progress_of(job)  # written as its grades land, not by opening the page
        return super().changeform_view(request, object_id, form_url, extra)

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"can_resync": self.has_resync_permission(request), **(extra_context or {})})

    def resync_view(self, request: HttpRequest) -> HttpResponse:
        """Choose a scope, see what it holds, confirm: Django's delete_selected, for a resync.

        A link with a scope (`admin_links.resync_url`: the Delivery, Course, Learner, Institution and why pages,
        the delivery list's actions) opens on its preview; with `step=choose`, on the form filled with it.
        """
        if not self.has_resync_permission(request):
            raise PermissionDenied
        scope_names = set(ResyncForm.base_fields)
        linked = {name: value for name, value in request.GET.items() if name in scope_names}
        if request.method == "POST":
            form = ResyncForm(request.POST)
        elif linked and request.GET.get("step") != "choose":
            form = ResyncForm(linked)
        else:
            form = ResyncForm(initial=linked)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Resync grades"),
            "opts": self.opts,
            "form": form,
            "media": self.media + form.media,
            "has_view_permission": True,
        }
        if form.is_bound and form.is_valid():
            scope = form.cleaned_data["scope"]
            if request.method == "POST" and request.POST.get("confirmed") == "yes":
                try:
                    with transaction.atomic():
                        job = resync.start_resync(scope=scope, acting_user=request.user)
                        self.log_addition(request, job, f"Resync requested: {scope.describe()} (" + ngettext(
                            "%(n)d grade", "%(n)d grades", job.estimated) % {"n": job.estimated} + ")")
                except resync.ResyncRefused as refusal:
                    self.message_user(request, refusal_html(refusal), messages.ERROR)
                else:
                    self.message_user(request, _("Resync #%(id)s queued: %(n)s grades.") % {"id": job.pk, "n": job.estimated})
                    return HttpResponseRedirect(reverse("admin:gradesync_resyncjob_change", args=[job.pk]))
            context.update(
                confirm=True, scope_description=scope.describe(), preview=resync.preview_resync(scope),
                # The form, filled with this scope to narrow or widen it (a delivery's as its learner and activity).
                change_scope_url=resync_url(
                    institution=scope.institution, course=scope.course, lti_user=scope.lti_user,
                    activity_key=scope.activity_key, only_changed=scope.only_changed, choose=True,
                ),
            )
        return TemplateResponse(request, "admin/gradesync/resyncjob/resync.html", context)

    def activities_view(self, request: HttpRequest) -> JsonResponse:
        """The resync form's activity choices: the chosen course's activities by title (select2's JSON)."""
        if not self.has_resync_permission(request):
            raise PermissionDenied
        term, page = request.GET.get("term", ""), request.GET.get("page", "1") or "1"
        if len(term) > AUTOCOMPLETE_TERM_MAX or not page.isdigit() or not 1 <= int(page) <= 1000:
            return JsonResponse({"error": gettext("Type at most 100 characters; pages are numbered from 1.")}, status=400)
        try:
            _institution, course, _learner = _scope_query(request.GET)
        except ValidationError as error:
            return JsonResponse({"error": " ".join(error.messages)}, status=400)
        if course is None:
            return JsonResponse({"error": gettext("Choose the course first.")}, status=400)
        start = (int(page) - 1) * ACTIVITIES_PER_PAGE
        rows = list(resync.activities_to_resync(course=course, term=term)[start:start + ACTIVITIES_PER_PAGE + 1])
        return JsonResponse({
            "results": [{"id": row["activity_key"], "text": f"{row['title'] or row['activity_key']} ({row['activity_key']})"}
                        for row in rows[:ACTIVITIES_PER_PAGE]],
            "pagination": {"more": len(rows) > ACTIVITIES_PER_PAGE},
        })

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
                report = resync.cancel_resync(job=job, acting_user=request.user)
                self.log_change(request, job, report.message)
        except resync.ResyncRefused as refusal:
            self.message_user(request, str(refusal), messages.WARNING)
        else:
            self.message_user(request, report.message)
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

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra = dict(extra_context or {})
        institution = self.get_object(request, object_id) if object_id else None
        if institution is not None:
            can_resync = request.user.has_perm(resync.RESYNC_PERMISSION)
            extra.update(
                can_resync=can_resync,
                resync_url=resync_url(institution=institution, choose=True),
                policy_drift=resync.policy_drift(institution),
                drift_resync_url=resync_url(institution=institution, only_changed=True) if can_resync else "",
            )
        return super().changeform_view(request, object_id, form_url, extra)

    def grade_policy_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The policy, what a change would do, and "Resync the affected grades" ticked when it would change any."""
        institution = get_object_or_404(self.get_queryset(request), pk=object_id)
        if not request.user.has_perm(CHANGE_GRADE_POLICY_PERMISSION):
            raise PermissionDenied
        can_resync = request.user.has_perm(resync.RESYNC_PERMISSION)
        def previews() -> list:
            return [
                resync.preview_policy_change(institution=institution, policy=policy)
                for policy in GradePolicy.values
                if policy != institution.grade_policy
            ]

        shown = previews() if request.method != "POST" else None  # a POST counts again only if it is refused
        form = PolicyChangeForm(request.POST or None, initial={
            "grade_policy": institution.grade_policy, "resync_affected": any(p.changed for p in shown or []),
        })
        if not can_resync:
            del form.fields["resync_affected"]
        if request.method == "POST" and form.is_valid():
            policy = form.cleaned_data["grade_policy"]
            outcome = resync.change_policy_and_resync(
                institution=institution, policy=policy, acting_user=request.user,
                resync_affected=bool(form.cleaned_data.get("resync_affected")),
            )
            back = HttpResponseRedirect(reverse("admin:institutions_institution_change", args=[institution.pk]))
            if not outcome.changed:
                self.message_user(request, _("The grade policy was already that; nothing changed."), messages.INFO)
                return back
            self.log_change(request, institution, [{"changed": {"fields": ["grade_policy"]}}])
            self.message_user(request, _("Grade policy changed to %s.") % GradePolicy(policy).label)
            if outcome.job is not None:
                self.log_change(request, institution, f"Resync #{outcome.job.pk} of the grades the new policy changes")
                self.message_user(request, _("Resync #%(id)s queued: %(n)s grades.") % {"id": outcome.job.pk, "n": outcome.job.estimated})
                return HttpResponseRedirect(reverse("admin:gradesync_resyncjob_change", args=[outcome.job.pk]))
            if outcome.refusal is not None:
                self.message_user(request, refusal_html(outcome.refusal), messages.WARNING)
            elif form.cleaned_data.get("resync_affected"):
                self.message_user(request, _("No grade in the LMS differs from the new policy: nothing to resync."), messages.INFO)
            return back
        context = {
            **self.grade_policy_context(request, institution, form),
            "previews": [(GradePolicy(p.policy).label, p) for p in (shown if shown is not None else previews())],
            "can_resync": can_resync,
        }
        return TemplateResponse(request, "admin/gradesync/grade_policy.html", context)
