"""Server time of the grade sync admin changelists on a large database.

    createdb -h 127.0.0.1 -U postgres changelist_bench
    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/changelist_bench
    .venv/bin/python manage.py migrate
    .venv/bin/python manage.py seed_grade_sync_rows --rows 1000000
    .venv/bin/python scripts/bench_changelists.py --runs 15

Each page is requested through Django's test client (the whole request: middleware, admin,
template) by a logged-in superuser; the figure is the median (and worst) of `--runs` requests
after one warm-up, with the page's query count. The sync health and "why" pages are measured too.
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
    args = parser.parse_args()

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse
    from django.utils import timezone

    from gradesync.models import Delivery, ResyncJob, Result
    from institutions.models import Institution

    if connection.vendor != "postgresql":
        print("warning: not PostgreSQL; set DATABASE_URL=postgres://…/changelist_bench", file=sys.stderr)
    user, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    institution = Institution.objects.filter(slug="bench-north").first() or Institution.objects.first()
    day_ago = (timezone.now() - timezone.timedelta(days=1)).isoformat(timespec="seconds")
    week_ago = (timezone.now() - timezone.timedelta(days=7)).isoformat(timespec="seconds")
    delivery = Delivery.objects.order_by("-id").first()
    deliveries = reverse("admin:gradesync_delivery_changelist")
    results = reverse("admin:gradesync_result_changelist")
    jobs = reverse("admin:gradesync_resyncjob_changelist")
    pages = [
        ("deliveries", deliveries, {}),
        ("deliveries status=refused", deliveries, {"status__exact": "refused"}),
        ("deliveries status=sent", deliveries, {"status__exact": "sent"}),
        ("deliveries institution", deliveries, {"institution__id__exact": institution.pk}),
        ("deliveries institution+refused+24h", deliveries, {"institution__id__exact": institution.pk, "status__exact": "refused", "updated_at__gte": day_ago}),
        ("deliveries sent_at past 7 days", deliveries, {"sent_at__gte": week_ago}),
        ("deliveries page 50", deliveries, {"p": 50}),
        ("deliveries search =email", deliveries, {"q": "learner17@bench-north.example.edu"}),
        ("results", results, {}),
        ("results is_eligible=no", results, {"is_eligible__exact": "0"}),
        ("results launch_role=instructor", results, {"launch_role": "instructor"}),
        ("resync jobs", jobs, {}),
        ("resync jobs status=done", jobs, {"status__exact": "done"}),
        ("sync health (all, cached 60 s)", reverse("gradesync_health"), {}),
        ("sync health (all, uncached)", reverse("gradesync_health"), {"fresh": 1}),
        ("sync health (institution, uncached)", reverse("gradesync_health"), {"institution": institution.pk, "fresh": 1}),
    ]
    if delivery is not None:
        pages.append(("why (one grade)", reverse("gradesync_why_delivery", args=[delivery.pk]), {"_follow": 1}))

    counts = {m.__name__: m.objects.count() for m in (Delivery, Result, ResyncJob)}
    print(f"rows: {counts}  database: {connection.vendor} {connection.settings_dict['NAME']}  runs: {args.runs}")
    print(f"{'page':42} {'median ms':>10} {'max ms':>8} {'queries':>8}")
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
        if median > args.budget_ms and not name.startswith(("sync health", "why")):
            over.append(name)
        print(f"{name:42} {median:10.1f} {max(times):8.1f} {queries:8d}")
    if over:
        print(f"over {args.budget_ms:.0f} ms: {', '.join(over)}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
