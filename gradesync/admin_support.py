"""Support pages in the admin: "why didn't this grade sync?" and sync health.

Thin views over `gradesync.diagnostics` and `gradesync.health`, mounted in config/urls.py
before `admin.site.urls` and wrapped in `admin.site.admin_view` (staff only; others get the
admin login). Reading them needs `gradesync.view_diagnostics`, which every staff role holds.
"""
from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.translation import gettext as _
from lti_tool.models import LtiUser

from institutions.models import Course, Institution

from . import admin_links, diagnostics, health, heartbeats
from .models import Delivery, Result
from .resync import RESYNC_PERMISSION
from .resync import policy_drift as resync_policy_drift

VIEW_PERMISSION = "gradesync.view_diagnostics"
HEALTH_CACHE_SECONDS = 60


def _require(request: HttpRequest) -> None:
    if not request.user.has_perm(VIEW_PERMISSION):
        raise PermissionDenied


def why_url(*, lti_user_id: int, course_id: int, activity_key: str) -> str:
    return reverse("gradesync_why") + "?" + urlencode({"user": lti_user_id, "course": course_id, "activity": activity_key})


def scope_resync_links(*, course: Course, lti_user: LtiUser, activity_key: str) -> list[tuple[str, str]]:
    """"Resync…" for each scope the why page shows, narrowest first: each opens on its preview."""
    return [
        (_("Resync this grade…"), admin_links.resync_url(course=course, lti_user=lti_user, activity_key=activity_key)),
        (_("Resync this learner in the course…"), admin_links.resync_url(course=course, lti_user=lti_user)),
        (_("Resync this activity in the course…"), admin_links.resync_url(course=course, activity_key=activity_key)),
        (_("Resync the course…"), admin_links.resync_url(course=course)),
    ]


def deliveries_url(filters: dict[str, str]) -> str:
    return reverse("admin:gradesync_delivery_changelist") + "?" + urlencode(filters)


def _context(request: HttpRequest, title: str, **extra) -> dict:
    return {**admin.site.each_context(request), "title": title, **extra}


def why_view(request: HttpRequest) -> HttpResponse:
    """The search box, its matches, and — for one (learner, course, activity) — the diagnosis."""
    _require(request)
    query = request.GET.get("q", "").strip()
    user_id, course_id, activity = request.GET.get("user"), request.GET.get("course"), request.GET.get("activity")
    context = _context(request, _("Why didn't this grade sync?"), query=query)
    if user_id and course_id and activity and user_id.isdigit() and course_id.isdigit():
        lti_user = get_object_or_404(LtiUser, pk=user_id)
        course = get_object_or_404(Course, pk=course_id)
        diagnosis = diagnostics.diagnose(lti_user=lti_user, course=course, activity_key=activity)
        resync_url = ""
        resync_links: list[tuple[str, str]] = []
        if request.user.has_perm(RESYNC_PERMISSION):
            resync_links = scope_resync_links(course=course, lti_user=lti_user, activity_key=activity)
            if diagnosis.picked is not None:
                resync_url = resync_links[0][1]
            else:
                resync_links = resync_links[1:]  # no eligible attempt: this one grade has nothing to send
        context.update(
            title=_("Why didn't this grade sync? %(who)s · %(what)s") % {"who": diagnostics._who(lti_user), "what": diagnosis.activity_title},
            diagnosis=diagnosis,
            resync_url=resync_url,
            resync_links=resync_links,
            policy_drift=resync_policy_drift(course.institution),
            drift_resync_url=admin_links.resync_url(institution=course.institution_id, only_changed=True) if resync_links else "",
            deliveries_url=deliveries_url({"course__id__exact": course.pk, "lti_user__id__exact": lti_user.pk, "activity_key": activity}),
        )
    elif query:
        context["matches"] = [
            (match, why_url(lti_user_id=match.lti_user_id, course_id=match.course_id, activity_key=match.activity_key))
            for match in diagnostics.find(query)
        ]
    return TemplateResponse(request, "admin/gradesync/support/why.html", context)


def why_for_delivery(request: HttpRequest, delivery_id: int) -> HttpResponse:
    _require(request)
    delivery = get_object_or_404(Delivery.objects.only("lti_user_id", "course_id", "activity_key"), pk=delivery_id)
    return HttpResponseRedirect(why_url(lti_user_id=delivery.lti_user_id, course_id=delivery.course_id, activity_key=delivery.activity_key))


def why_for_result(request: HttpRequest, result_id: int) -> HttpResponse:
    _require(request)
    result = get_object_or_404(Result.objects.only("lti_user_id", "course_id", "activity_key"), pk=result_id)
    if result.lti_user_id is None:
        return HttpResponseRedirect(reverse("gradesync_why") + "?" + urlencode({"q": f"#{result.pk}"}))
    return HttpResponseRedirect(why_url(lti_user_id=result.lti_user_id, course_id=result.course_id, activity_key=result.activity_key))


def why_for_course(request: HttpRequest, course_id: int) -> HttpResponse:
    _require(request)
    course = get_object_or_404(Course.objects.select_related("context"), pk=course_id)
    return HttpResponseRedirect(reverse("gradesync_why") + "?" + urlencode({"q": course.context.id_on_platform}))


def why_for_learner(request: HttpRequest, lti_user_id: int) -> HttpResponse:
    _require(request)
    lti_user = get_object_or_404(LtiUser, pk=lti_user_id)
    return HttpResponseRedirect(reverse("gradesync_why") + "?" + urlencode({"q": lti_user.sub}))


def health_view(request: HttpRequest) -> HttpResponse:
    """Sync health overall, or for one institution (?institution=<id>); ?hours=168 for a week's chart."""
    _require(request)
    institution = None
    if request.GET.get("institution", "").isdigit():
        institution = get_object_or_404(Institution, pk=request.GET["institution"])
    hours = 168 if request.GET.get("hours") == "168" else 24
    # A minute-old picture is fine for support, and keeps a busy outbox from paying for it on every reload.
    key = f"gradesync:health:{institution.pk if institution else 'all'}:{hours}"
    report = None if request.GET.get("fresh") else cache.get(key)
    if report is None:
        report = health.sync_health(institution=institution, chart_hours=hours)
        cache.set(key, report, HEALTH_CACHE_SECONDS)
    institution_id = institution.pk if institution else None
    chart = health.chart_geometry(report.chart, institution_id=institution_id)
    links = {
        window: [(state, figure, deliveries_url(figure.filters)) for state, figure in figures.items()]
        for window, figures in report.counts.items()
    }
    context = _context(
        request,
        _("Sync health: %s") % institution if institution else _("Sync health: all institutions"),
        health=report,
        counts=links,
        chart=chart,
        bar_links=[(bar, deliveries_url(bar.filters), deliveries_url(bar.failed_filters)) for bar in chart.bars],
        refusals=[(refusal, deliveries_url(refusal.filters)) for refusal in report.refusals],
        oldest_url=deliveries_url(report.oldest_undelivered.filters),
        per_institution=[
            (row, [(state, figure, deliveries_url(figure.filters)) for state, figure in row.counts.items()])
            for row in report.per_institution
        ],
        institutions=Institution.objects.order_by("name").only("pk", "name"),
        hours=hours,
        states=health.STATE_LABELS,
        # Beat and the workers, read fresh: a stopped beat means no sweeper and no resync watchdog.
        processes=heartbeats.report(),
    )
    return TemplateResponse(request, "admin/gradesync/support/health.html", context)


def _wrap(view):
    return admin.site.admin_view(view)


urlpatterns = [
    path("why/", _wrap(why_view), name="gradesync_why"),
    path("why/delivery/<int:delivery_id>/", _wrap(why_for_delivery), name="gradesync_why_delivery"),
    path("why/result/<int:result_id>/", _wrap(why_for_result), name="gradesync_why_result"),
    path("why/course/<int:course_id>/", _wrap(why_for_course), name="gradesync_why_course"),
    path("why/learner/<int:lti_user_id>/", _wrap(why_for_learner), name="gradesync_why_learner"),
    path("health/", _wrap(health_view), name="gradesync_health"),
]
