"""Grade sync in the admin: the ledger, the outbox and each exchange with the LMS."""
from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin import DateFieldListFilter, helpers
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext, gettext_lazy as _
from lti_tool.models import LtiUser

from institutions.local_time import local_time
from institutions.redaction import redact

from . import diagnostics, resync
from .admin_links import resync_url
from .admin_paging import EstimatedCountPaginator, IndexedSearchMixin, LargeTableChangeList
from .admin_support import why_url
from .display import score_text
from .eligibility import ROLE_WORDS
from .models import Delivery, DeliveryExchange, Result, SyncWarning


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
    list_display = ["id", "status", "learner", "course", "activity", "grade", "attempts", "last_status_code", "updated", "why"]
    # Sync health links here with these parameters. Each filter has an index (gradesync 0005 adds
    # is_resync's and sent_at's), so a value that matches few rows is not a scan of the outbox.
    list_filter = ["status", "is_resync", "institution", ("updated_at", DateFieldListFilter), ("sent_at", DateFieldListFilter)]
    list_select_related = ()
    # Course.__str__ falls back to its context; the result names the activity, the line item has the LMS's points.
    list_prefetch_related = ["lti_user", "course__context", "result", "line_item"]
    raw_id_fields = ["result", "course", "lti_user", "line_item", "resource_link"]
    search_fields = ["=id", "=lti_user__sub", "=lti_user__email"]  # see IndexedSearchMixin
    search_help_text = _("A delivery id, or a learner's exact LMS user id or email.")
    ordering = ["-id"]
    sortable_by = ["id", "course", "updated"]  # the pk, delivery_course_user_act_idx, delivery_window_idx
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
        """The preview of a resync whose scope is taken from the one selected delivery, ready to confirm."""
        chosen = list(queryset[:2])
        if len(chosen) != 1:
            self.message_user(request, _("Select exactly one delivery for this action."), messages.WARNING)
            return None
        delivery = chosen[0]
        values = {
            "delivery": delivery.pk, "institution": delivery.institution_id, "course": delivery.course_id,
            "lti_user": delivery.lti_user_id, "activity_key": delivery.activity_key,
        }
        return HttpResponseRedirect(resync_url(**{name: values[name] for name in fields}))  # its preview

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra = dict(extra_context or {})
        if object_id and self.has_resync_permission(request) and str(object_id).isdigit():
            extra["resync_url"] = resync_url(delivery=int(object_id))
        return super().changeform_view(request, object_id, form_url, extra)

    @admin.display(description=_("learner"))
    def learner(self, delivery: Delivery) -> str:
        return learner_link(delivery.lti_user)

    @admin.display(description=_("activity"))
    def activity(self, delivery: Delivery) -> str:
        return (delivery.result.activity_title if delivery.result_id else "") or delivery.activity_key

    @admin.display(description=_("grade"))
    def grade(self, delivery: Delivery) -> str:
        return score_text(delivery.score, delivery.line_item.maximum_score if delivery.line_item_id else None)

    @admin.display(description=_("updated at"), ordering="updated_at")
    def updated(self, delivery: Delivery) -> str:
        return local_time(delivery.updated_at)

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
    list_display = ["id", "activity", "learner", "course", "grade", "completed", "is_eligible", "ineligible_reason", "why"]
    list_filter = ["is_eligible", LaunchRoleFilter]
    list_select_related = ()
    list_prefetch_related = ["lti_user", "course__context", "resource_link__ltilineitem_set"]  # the LMS's points
    raw_id_fields = ["lti_user", "course", "resource_link", "launched_course", "launch_deployment"]
    search_fields = ["=id", "=lti_user__sub", "=lti_user__email"]  # see IndexedSearchMixin
    search_help_text = _("A result id, or a learner's exact LMS user id or email.")
    ordering = ["-id"]
    sortable_by = ["id", "course"]  # the pk, result_course_user_act_idx

    @admin.display(description=_("learner"))
    def learner(self, result: Result) -> str:
        return learner_link(result.lti_user)

    @admin.display(description=_("activity"))
    def activity(self, result: Result) -> str:
        return result.activity_title or result.activity_key

    @admin.display(description=_("grade"))
    def grade(self, result: Result) -> str:
        # The newest line item bound to the attempt's link (prefetched): the LMS's points for it.
        items = sorted(result.resource_link.ltilineitem_set.all(), key=lambda item: -item.pk) if result.resource_link_id else []
        return score_text(result.score, items[0].maximum_score if items else None)

    @admin.display(description=_("completed at"))
    def completed(self, result: Result) -> str:
        return local_time(result.completed_at)

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
            if request.user.has_perm(resync.RESYNC_PERMISSION):
                # The institution is filled in when all the learner's grades are in one.
                institutions = list(
                    Result.objects.filter(lti_user=lti_user).values_list("course__institution", flat=True).distinct()[:2]
                )
                extra["resync_url"] = resync_url(
                    lti_user=lti_user, institution=institutions[0] if len(institutions) == 1 else None, choose=True
                )
        return super().changeform_view(request, object_id, form_url, extra)


# The resync admin (ResyncJob, the grade policy change) lives beside this one.
from . import admin_resync  # noqa: E402,F401
