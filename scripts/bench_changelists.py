"""Server time of the grade sync admin changelists on a large database.

    createdb -h 127.0.0.1 -U postgres changelist_bench
    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/changelist_bench
    .venv/bin/python manage.py migrate
    .venv/bin/python manage.py seed_grade_sync_rows --rows 1000000
    .venv/bin/python scripts/bench_changelists.py --runs 15

Each page is requested through Django's test client (the whole request: middleware, admin,
template) by a logged-in superuser; the figure is the median (and worst) of `--runs` requests
after one warm-up, with the page's query count. Besides the plain lists: the filters sync health
links to (taken from a fresh report), the sortable columns, searches that match and that match
nothing, the learner pages, and the sync health and "why" pages themselves (cached and not).
`--only TEXT` keeps the pages whose name contains TEXT. Exit status 1 when a changelist's median
is over `--budget-ms`; with `--strict`, when any page's median or worst is.

Sync health's chart reads closed hours from an hourly rollup that beat brings up to date every
5 minutes (`gradesync.health.roll_up_delivery_hours`); the script does that first, as beat
would have, unless `--no-roll-up` (then the hours not rolled up are read from the outbox).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--budget-ms", type=float, default=300.0)
    parser.add_argument("--only", default="", help="Only the pages whose name contains this.")
    parser.add_argument("--strict", action="store_true", help="Hold every page's median and worst to the budget.")
    parser.add_argument("--no-roll-up", action="store_true", help="Leave sync health's hourly rollup as it is.")
    args = parser.parse_args()

    import django

    django.setup()
    from django.contrib import admin
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client, RequestFactory
    from django.test.utils import CaptureQueriesContext
    from django.urls import NoReverseMatch, reverse
    from django.utils import timezone

    from lti_tool.models import LtiUser

    from gradesync import health
    from gradesync.models import Delivery, ResyncJob, Result
    from institutions.models import Institution

    if connection.vendor != "postgresql":
        print("warning: not PostgreSQL; set DATABASE_URL=postgres://…/changelist_bench", file=sys.stderr)
    user, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    # The admin needs a second factor (staff.sites): record a verified device in the session as django_otp.login does.
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from staff.middleware import mark_active

    device, _ = TOTPDevice.objects.get_or_create(user=user, name="bench", defaults={"confirmed": True})
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    mark_active(session)  # the idle clock starts at sign-in, so no timed request writes the session
    session.save()
    institution = Institution.objects.filter(slug="bench-north").first() or Institution.objects.first()
    day_ago = (timezone.now() - timezone.timedelta(days=1)).isoformat(timespec="seconds")
    week_ago = (timezone.now() - timezone.timedelta(days=7)).isoformat(timespec="seconds")
    delivery = Delivery.objects.order_by("-id").first()
    learner = LtiUser.objects.filter(registration__name__startswith="Bench North").order_by("-id").first() or LtiUser.objects.last()
    deliveries = reverse("admin:gradesync_delivery_changelist")
    results = reverse("admin:gradesync_result_changelist")
    jobs = reverse("admin:gradesync_resyncjob_changelist")
    try:
        learners = reverse("admin:lti_tool_ltiuser_changelist")
    except NoReverseMatch:  # a checkout from before the learner admin: measure the rest
        learners = None
    if not args.no_roll_up and hasattr(health, "roll_up_delivery_hours"):
        started = time.perf_counter()
        rolled = health.roll_up_delivery_hours()
        print(f"sync health rollup brought up to date (as beat does every 5 min): {rolled.hours} hours counted "
              f"in {(time.perf_counter() - started) * 1000:.0f} ms")
    report = health.sync_health()  # the links support follows from the health page
    refusal_link = report.refusals[0].filters if report.refusals else {"status__exact": "refused"}

    def column(model, name: str) -> int:
        """The changelist's ?o= number of a column (its list_display, the action checkbox included)."""
        request = RequestFactory().get("/")
        request.user = user
        return list(admin.site._registry[model].get_changelist_instance(request).list_display).index(name)

    pages = [
        ("deliveries", deliveries, {}),
        ("deliveries status=refused", deliveries, {"status__exact": "refused"}),
        ("deliveries status=sent", deliveries, {"status__exact": "sent"}),
        ("deliveries status=sending (none)", deliveries, {"status__exact": "sending"}),
        ("deliveries institution", deliveries, {"institution__id__exact": institution.pk}),
        ("deliveries institution+refused+24h", deliveries, {"institution__id__exact": institution.pk, "status__exact": "refused", "updated_at__gte": day_ago}),
        ("deliveries is_resync", deliveries, {"is_resync__exact": "1"}),
        ("deliveries sent_at past 7 days", deliveries, {"sent_at__gte": week_ago}),
        ("deliveries health: top refusal", deliveries, refusal_link),
        ("deliveries health: oldest undelivered", deliveries, report.oldest_undelivered.filters),
        ("deliveries health: 7d dead", deliveries, report.counts["7d"]["dead"].filters),
        ("deliveries page 50", deliveries, {"p": 50}),
        ("deliveries sort course", deliveries, {"o": column(Delivery, "course")}),
        ("deliveries sort -updated_at", deliveries, {"o": f"-{column(Delivery, 'updated_at')}"}),
        ("deliveries ?o=learner (not sortable)", deliveries, {"o": column(Delivery, "learner")}),
        ("deliveries search =email", deliveries, {"q": "learner17@bench-north.example.edu"}),
        ("deliveries search (no match)", deliveries, {"q": "nobody@example.com"}),
        ("deliveries of one learner", deliveries, {"lti_user__id__exact": learner.pk}),
        ("results", results, {}),
        ("results is_eligible=no", results, {"is_eligible__exact": "0"}),
        ("results launch_role=instructor", results, {"launch_role": "instructor"}),
        ("results is_eligible=no+role=none", results, {"is_eligible__exact": "0", "launch_role": "none"}),
        ("results sort course", results, {"o": column(Result, "course")}),
        ("results search =sub", results, {"q": "bench-north-user-17"}),
        ("results search (no match)", results, {"q": "nobody@example.com"}),
        ("resync jobs", jobs, {}),
        ("resync jobs status=done", jobs, {"status__exact": "done"}),
        ("resync jobs status=running (none)", jobs, {"status__exact": "running"}),
        ("resync jobs sort -created_at", jobs, {"o": f"-{column(ResyncJob, 'created_at')}"}),
        ("resync jobs ?o=sent (not sortable)", jobs, {"o": column(ResyncJob, "sent")}),
        ("learners", learners, {}),
        ("learners search email", learners, {"q": "learner17@bench-north.example.edu"}),
        ("learners search name", learners, {"q": "Learner 1234 of"}),
        ("learners search (no match)", learners, {"q": "nobody"}),
        ("learner page", learners and f"{learners}{learner.pk}/change/", {}),
        ("sync health (all, cached 60 s)", reverse("gradesync_health"), {}),
        ("sync health (all, uncached)", reverse("gradesync_health"), {"fresh": 1}),
        ("sync health (institution, uncached)", reverse("gradesync_health"), {"institution": institution.pk, "fresh": 1}),
        ("sync health (all, 7-day chart, uncached)", reverse("gradesync_health"), {"hours": 168, "fresh": 1}),
    ]
    if delivery is not None:
        pages.append(("why (one grade)", reverse("gradesync_why_delivery", args=[delivery.pk]), {"_follow": 1}))
    pages = [page for page in pages if args.only in page[0] and page[1]]

    counts = {m.__name__: m.objects.count() for m in (Delivery, Result, ResyncJob)}
    print(f"rows: {counts}  database: {connection.vendor} {connection.settings_dict['NAME']}  runs: {args.runs}")
    print(f"{'page':42} {'median ms':>10} {'max ms':>8} {'queries':>8}")
    began = time.monotonic()
    over = []
    for name, url, params in pages:
        params = dict(params)
        follow = bool(params.pop("_follow", False))
        client.get(url, params, follow=follow)  # warm-up
        times = []
        queries = 0
        for _ in range(args.runs):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = client.get(url, params, follow=follow)
                times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (name, response.status_code)
            queries = len(captured)
        median = statistics.median(times)
        if args.strict and max(times) > args.budget_ms or median > args.budget_ms and not name.startswith(("sync health", "why")):
            over.append(name)
        print(f"{name:42} {median:10.1f} {max(times):8.1f} {queries:8d}")
    load = os.getloadavg()
    print(f"{len(pages)} pages in {time.monotonic() - began:.0f} s; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if over:
        print(f"over {args.budget_ms:.0f} ms: {', '.join(over)}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
