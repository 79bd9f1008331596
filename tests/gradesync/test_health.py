"""Sync health: counts by state per window and institution, latency, backlog, refusals, the hourly chart,
and every figure's link listing exactly the deliveries behind it."""
from __future__ import annotations

import datetime
import itertools
import re
from decimal import Decimal
from html import unescape

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gradesync import health
from gradesync.models import Delivery, DeliveryStatus, Result
from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT
from tests.courseware_factories import LtiUserFactory
from tests.factories import CourseFactory

pytestmark = pytest.mark.django_db
_n = itertools.count(1)
NOW = timezone.now()


def delivery(course, status, *, hours_ago=1.0, latency=2.0, code=None, message="", resync=False):
    user = LtiUserFactory(registration=course.deployment.registration)
    result = Result.objects.create(
        source_ref=f"h-{next(_n)}", lti_user=user, course=course, activity_key="a", score=Decimal("0.5"),
        completed_at=NOW, is_eligible=True,
    )
    recorded = NOW - datetime.timedelta(hours=hours_ago)
    row = Delivery.objects.create(
        result=result, course=course, institution=course.institution, registration=course.deployment.registration,
        deployment=course.deployment, lti_user=user, activity_key="a", score=Decimal("0.5"), status=status,
        recorded_at=recorded, is_resync=resync, last_status_code=code, last_message=message,
    )
    Delivery.objects.filter(pk=row.pk).update(
        updated_at=recorded, sent_at=recorded + datetime.timedelta(seconds=latency) if status == DeliveryStatus.SENT else None
    )
    return row


ALLOWED = ("Canvas refused: Allowed Attempts reached. Raise Allowed Attempts in Canvas, then resync this grade. "
           "LMS said: {\"errors\":[{\"message\":\"The maximum number of allowed attempts has been reached\"}]}")


@pytest.fixture
def outbox(two_institutions):
    north, south = two_institutions
    n_course, s_course = CourseFactory(institution=north), CourseFactory(institution=south)
    for latency in (1, 2, 3, 4, 100):
        delivery(n_course, DeliveryStatus.SENT, latency=latency)
    delivery(n_course, DeliveryStatus.SENT, latency=500, resync=True)  # resyncs do not count in latency
    delivery(n_course, DeliveryStatus.SENT, hours_ago=50, latency=7)  # 7 days only
    delivery(n_course, DeliveryStatus.PENDING, hours_ago=0.1)
    delivery(n_course, DeliveryStatus.SENDING, hours_ago=0.1)
    delivery(n_course, DeliveryStatus.RETRYING, hours_ago=3)
    delivery(n_course, DeliveryStatus.REFUSED, code=422, message=ALLOWED)
    delivery(n_course, DeliveryStatus.REFUSED, hours_ago=30, code=422, message=ALLOWED.replace("allowed attempts has", "attempts has"))
    delivery(n_course, DeliveryStatus.DEAD, hours_ago=5)
    delivery(s_course, DeliveryStatus.SENT, latency=10)
    delivery(s_course, DeliveryStatus.REFUSED, code=400, message="Moodle refused: not enrolled. LMS said: Incorrect score received")
    delivery(s_course, DeliveryStatus.PENDING, hours_ago=200)  # older than 7 days by updated_at; still the oldest open
    return north, south


def values(report, window):
    return {state: figure.value for state, figure in report.counts[window].items()}


def test_counts_by_state_per_window_and_institution(outbox):
    north, south = outbox
    overall = health.sync_health(now=NOW)
    assert values(overall, "24h") == {"sent": 7, "pending": 2, "retrying": 1, "refused": 2, "dead": 1}
    assert values(overall, "7d") == {"sent": 8, "pending": 2, "retrying": 1, "refused": 3, "dead": 1}
    assert values(health.sync_health(institution=north, now=NOW), "24h") == {"sent": 6, "pending": 2, "retrying": 1, "refused": 1, "dead": 1}
    assert values(health.sync_health(institution=south, now=NOW), "7d") == {"sent": 1, "pending": 0, "retrying": 0, "refused": 1, "dead": 0}
    rows = {row.name: {s: f.value for s, f in row.counts.items()} for row in overall.per_institution}
    assert rows["South University"] == {"sent": 1, "pending": 0, "retrying": 0, "refused": 1, "dead": 0}


def test_latency_percentiles_of_live_grades(outbox):
    north, _south = outbox
    report = health.sync_health(institution=north, now=NOW)
    latency = report.latency["24h"]
    assert latency.sample == 5
    assert latency.p50 == pytest.approx(3.0)
    assert latency.p99 == pytest.approx(health.percentile([1, 2, 3, 4, 100], 0.99))
    assert health.sync_health(institution=north, now=NOW).latency["7d"].sample == 6


def test_percentile_matches_percentile_cont():
    assert health.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert health.percentile([5], 0.99) == 5
    assert health.percentile([], 0.5) is None


def test_oldest_undelivered_and_top_refusals(outbox):
    north, _ = outbox
    overall = health.sync_health(now=NOW)
    assert overall.oldest_age_seconds == pytest.approx(200 * 3600, rel=0.01)
    assert health.sync_health(institution=north, now=NOW).oldest_age_seconds == pytest.approx(3 * 3600, rel=0.01)
    top = overall.refusals[0]
    assert (top.status_code, top.count) == (422, 2)
    assert top.reason == "Canvas refused: Allowed Attempts reached. Raise Allowed Attempts in Canvas, then resync this grade."


def test_hourly_chart_buckets(outbox):
    report = health.sync_health(now=NOW)
    assert len(report.chart) == 24
    assert sum(b.sent for b in report.chart) == 7
    assert sum(b.failed for b in report.chart) == 3  # refused 422 (1 h), refused 400 (1 h), dead (5 h)
    week = health.sync_health(now=NOW, chart_hours=168)
    assert len(week.chart) == 168 and sum(b.total for b in week.chart) == 15


def listed_ids(client, url) -> set[int]:
    response = client.get(url)
    assert response.status_code == 200, url
    return {obj.pk for obj in response.context["cl"].result_list}


def test_every_figure_links_to_the_deliveries_behind_it(outbox, client_for):
    north, _ = outbox
    client = client_for(READ_ONLY)
    page = client.get(reverse("gradesync_health"), {"institution": north.pk})
    assert page.status_code == 200
    report = page.context["health"]
    for window, figures in page.context["counts"].items():
        for state, figure, url in figures:
            expected = set(
                Delivery.objects.filter(institution=north, status__in=health.STATES[state],
                                        updated_at__gte=NOW - health.WINDOWS[window] - datetime.timedelta(minutes=1)).values_list("pk", flat=True)
            )
            assert len(listed_ids(client, url)) == figure.value == len(expected), (window, state)
            assert unescape(url) in unescape(page.content.decode())
    refusal, url = page.context["refusals"][0]
    assert listed_ids(client, url) == set(Delivery.objects.filter(institution=north, status="refused", last_status_code=422).values_list("pk", flat=True))
    for bar, url, failed_url in page.context["bar_links"]:
        if bar.bucket.total:
            assert len(listed_ids(client, url)) == bar.bucket.total
        if bar.bucket.failed:
            assert len(listed_ids(client, failed_url)) == bar.bucket.failed
    assert len(listed_ids(client, page.context["oldest_url"])) == 3
    assert report.institution == north


def test_the_chart_is_inline_svg_with_linked_bars(outbox, client_for):
    body = client_for(SUPPORT).get(reverse("gradesync_health")).content.decode()
    svg = re.search(r'<svg id="health-chart".*?</svg>', body, re.S).group(0)
    assert svg.count('class="bar"') == 24
    assert reverse("admin:gradesync_delivery_changelist") in svg
    assert 'class="failed"' in svg


def test_the_health_page_query_count_is_fixed(outbox, client_for, django_assert_max_num_queries):
    client = client_for(SUPPORT)
    with django_assert_max_num_queries(25):
        assert client.get(reverse("gradesync_health")).status_code == 200


@pytest.mark.parametrize("role", [SUPPORT, INTEGRATION, READ_ONLY])
def test_every_staff_role_reads_health(role, outbox, client_for):
    assert client_for(role).get(reverse("gradesync_health")).status_code == 200


def test_anonymous_is_sent_to_the_login(client):
    response = client.get(reverse("gradesync_health"))
    assert response.status_code == 302 and reverse("admin:login") in response.url


def test_the_backlog_age_reads_in_words():
    assert [health.duration_words(s) for s in (None, 45, 360, 3 * 3600 + 120, 200 * 3600)] == ["—", "45 s", "6 min", "3 h 2 min", "8 d 8 h"]


# The index each sync health query is meant to read, by a word of its SQL.
HEALTH_INDEXES = {
    "percentile_cont": "delivery_latency_idx",
    "MIN(": "delivery_open_recorded_idx",
    "STRPOS": "delivery_refused_idx",
    '"status" IN (': "delivery_open_updated_idx",  # the chart's open rows by hour
    "DATE_TRUNC": "delivery_window_idx",
    "FILTER": "delivery_window_idx",
}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's plans and partial indexes")
def test_every_health_query_can_be_served_by_its_index(outbox):
    """Each query sync health sends can read its index of migration 0005: a partial index's condition
    must follow from the query's WHERE, a covering one must hold every column it reads. A test's
    handful of rows cannot show the planner's choice at scale, so each query is planned with only
    its index left (dropped inside a savepoint) and sequential scans priced out."""
    with CaptureQueriesContext(connection) as captured:
        health.sync_health(now=NOW)
        health.sync_health(institution=outbox[0], now=NOW)
    queries = [q["sql"] for q in captured if re.search(r"gradesync_delivery\b", q["sql"]) and q["sql"].startswith("SELECT")]
    assert len(queries) == 2 * 7  # counts, latency ×2, oldest, refusals, the chart's open rows, hours not rolled up
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'gradesync_delivery' AND indexname <> 'gradesync_delivery_pkey'")
        indexes = [row[0] for row in cursor.fetchall()]
        cursor.execute("SET LOCAL enable_seqscan = off")
        for sql in queries:
            expected = next(index for word, index in HEALTH_INDEXES.items() if word in sql)
            savepoint = transaction.savepoint()
            for index in indexes:
                if index != expected:
                    cursor.execute(f'DROP INDEX "{index}"')
            cursor.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            transaction.savepoint_rollback(savepoint)
            assert expected in plan and "Seq Scan" not in plan, (sql, plan)


# --- The chart's hourly rollup (DeliveryHour) ------------------------------------------------


def chart_from_the_outbox(now, hours, institution=None):
    """The chart as a plain reading of the outbox: every row by the hour of its updated_at, as it stands."""
    end = now.astimezone(datetime.timezone.utc).replace(minute=0, second=0, microsecond=0) + datetime.timedelta(hours=1)
    start = end - datetime.timedelta(hours=hours)
    cells = {start + datetime.timedelta(hours=i): [0, 0, 0] for i in range(hours)}
    rows = Delivery.objects.all() if institution is None else Delivery.objects.filter(institution=institution)
    for updated_at, status in rows.values_list("updated_at", "status"):
        if start <= updated_at < end:
            kind = 0 if status == DeliveryStatus.SENT else 1 if status in health.FAILED else 2
            cells[updated_at.astimezone(datetime.timezone.utc).replace(minute=0, second=0, microsecond=0)][kind] += 1
    return [(moment, *counts) for moment, counts in cells.items()]


def plotted(report):
    return [(bucket.start, bucket.sent, bucket.failed, bucket.other) for bucket in report.chart]


def assert_chart_is_the_outbox(north, south):
    for institution in (None, north, south):
        for hours in (24, 168):
            report = health.sync_health(institution=institution, now=NOW, chart_hours=hours)
            assert plotted(report) == chart_from_the_outbox(NOW, hours, institution), (institution, hours)


def closed_hour(hours_ago):
    return (NOW - datetime.timedelta(hours=hours_ago)).replace(minute=0, second=0, microsecond=0)


def test_the_rolled_up_chart_is_the_outbox(outbox):
    north, south = outbox
    assert_chart_is_the_outbox(north, south)  # nothing rolled up yet: all from the outbox
    outcome = health.roll_up_delivery_hours(now=NOW)
    closed = 167 if NOW - health.ROLLUP_GRACE >= closed_hour(0) else 166  # the last hour, once it ended 5 min ago
    assert outcome.hours == closed
    five = health.DeliveryHour.objects.get(hour=closed_hour(5), institution=None)
    assert (five.sent, five.refused, five.dead, five.open) == (0, 0, 1, 0)
    assert health.DeliveryHour.objects.get(hour=closed_hour(3), institution=north).open == 1
    assert_chart_is_the_outbox(north, south)


def test_the_chart_reads_counted_hours_from_the_rollup(outbox):
    health.roll_up_delivery_hours(now=NOW)
    health.DeliveryHour.objects.filter(hour=closed_hour(5), institution=None).update(sent=40)
    bucket = next(b for b in health.sync_health(now=NOW).chart if b.start == closed_hour(5))
    assert (bucket.sent, bucket.failed) == (40, 1)


def test_rows_that_move_on_after_the_roll_up_are_plotted_as_they_stand(outbox):
    """Between two roll-ups: retrying → dead and → sent in a counted hour, a row re-planned (updated
    now), a queued row withdrawn, a row committed late into a counted hour. The counts of the hours
    whose open rows changed no longer hold; the chart reads those from the outbox."""
    north, south = outbox
    n_course = Delivery.objects.filter(institution=north).first().course
    s_course = Delivery.objects.filter(institution=south).first().course
    retrying = delivery(n_course, DeliveryStatus.RETRYING, hours_ago=8)
    replanned = delivery(n_course, DeliveryStatus.PENDING, hours_ago=30)
    withdrawn = delivery(s_course, DeliveryStatus.PENDING, hours_ago=40)
    health.roll_up_delivery_hours(now=NOW)

    # As the delivery path writes them: status only (QuerySet.update leaves updated_at alone).
    Delivery.objects.filter(status=DeliveryStatus.RETRYING, institution=north).exclude(pk=retrying.pk).update(status=DeliveryStatus.DEAD)
    Delivery.objects.filter(pk=retrying.pk).update(status=DeliveryStatus.SENT)
    Delivery.objects.filter(pk=replanned.pk).update(status=DeliveryStatus.PENDING, updated_at=NOW)  # a resync re-planned it
    Delivery.objects.filter(pk=withdrawn.pk).delete()  # a cancelled resync withdrew it
    delivery(s_course, DeliveryStatus.PENDING, hours_ago=60)  # committed after the hour was counted
    assert_chart_is_the_outbox(north, south)

    latest = health._hour_of(NOW - health.ROLLUP_GRACE)
    recent = {latest - datetime.timedelta(hours=n) for n in range(1, health.ROLLUP_RECOUNT_HOURS + 1)}
    changed = {closed_hour(n) for n in (3, 8, 30, 40, 60)}
    assert health.roll_up_delivery_hours(now=NOW).hours == len(recent | changed)
    assert health.DeliveryHour.objects.get(hour=closed_hour(8), institution=north).sent == 1
    assert_chart_is_the_outbox(north, south)


def test_hours_counted_before_they_ended_are_not_trusted(outbox):
    """A roll-up whose clock ran ahead counted the current hour: it is read from the outbox all the same."""
    north, south = outbox
    health.roll_up_delivery_hours(now=NOW + datetime.timedelta(hours=3))
    assert health.DeliveryHour.objects.filter(hour=closed_hour(0)).exists()
    delivery(Delivery.objects.filter(institution=north).first().course, DeliveryStatus.SENT, hours_ago=0)
    assert_chart_is_the_outbox(north, south)


def test_hours_missing_from_the_rollup_come_from_the_outbox(outbox):
    north, south = outbox
    health.roll_up_delivery_hours(now=NOW)
    health.DeliveryHour.objects.filter(hour__in=[closed_hour(5), closed_hour(30), closed_hour(50)]).delete()
    assert_chart_is_the_outbox(north, south)
    assert health.roll_up_delivery_hours(now=NOW).hours == health.ROLLUP_RECOUNT_HOURS + 3


def test_a_full_recount_catches_delivered_rows_deleted_since(outbox):
    """A sent row deleted (say, with its learner) changes no open count: the periodic full roll-up recounts."""
    north, south = outbox
    health.roll_up_delivery_hours(now=NOW)
    Delivery.objects.filter(status=DeliveryStatus.SENT, updated_at__lt=NOW - datetime.timedelta(hours=40)).delete()
    health.roll_up_delivery_hours(now=NOW, full=True)
    assert_chart_is_the_outbox(north, south)


def test_rolling_up_again_rewrites_the_same_rows(outbox):
    north, _ = outbox
    health.roll_up_delivery_hours(now=NOW)
    first = list(health.DeliveryHour.objects.order_by("hour", "institution_id").values_list("hour", "institution_id", "sent", "refused", "dead", "open"))
    health.roll_up_delivery_hours(now=NOW, full=True)
    health.roll_up_delivery_hours(now=NOW)
    again = list(health.DeliveryHour.objects.order_by("hour", "institution_id").values_list("hour", "institution_id", "sent", "refused", "dead", "open"))
    assert again == first
    assert health.DeliveryHour.objects.filter(institution=None).count() == len({row[0] for row in first})
    # Old hours go; the current hour is never counted (it is read from the outbox).
    health.DeliveryHour.objects.create(hour=closed_hour(24 * 40), computed_at=NOW)
    assert health.roll_up_delivery_hours(now=NOW).pruned == 1
    assert not health.DeliveryHour.objects.filter(hour=closed_hour(0)).exists()


def test_the_bars_of_a_rolled_up_chart_link_to_their_rows(outbox, client_for):
    north, _ = outbox
    health.roll_up_delivery_hours()
    client = client_for(READ_ONLY)
    page = client.get(reverse("gradesync_health"), {"institution": north.pk, "hours": 168})
    assert health.DeliveryHour.objects.exists()
    for bar, url, failed_url in page.context["bar_links"]:
        if bar.bucket.total:
            assert len(listed_ids(client, url)) == bar.bucket.total
        if bar.bucket.failed:
            assert len(listed_ids(client, failed_url)) == bar.bucket.failed


def test_beat_rolls_up_the_hours(outbox, settings):
    from gradesync.tasks import roll_up_delivery_hours

    scheduled = [entry for entry in settings.CELERY_BEAT_SCHEDULE.values() if entry["task"] == roll_up_delivery_hours.name]
    assert {entry.get("kwargs", {}).get("full", False) for entry in scheduled} == {False, True}
    assert roll_up_delivery_hours.run()["hours"] >= 166  # the week's closed hours
    assert roll_up_delivery_hours.run(full=True)["rows"] > 0


def test_the_page_says_when_beat_or_the_workers_stopped(client_for):
    from django.core.cache import cache

    from gradesync import heartbeats

    client = client_for(SUPPORT)
    page = unescape(client.get(reverse("gradesync_health")).content.decode())
    assert "beat (sweeper, resync watchdog): no beat heartbeat yet" in page and "workers: no worker heartbeat yet" in page
    heartbeats.beat_published()
    heartbeats.worker_ran("worker-1@host")
    page = unescape(client.get(reverse("gradesync_health")).content.decode())
    assert "beat (sweeper, resync watchdog): running" in page and "workers: running" in page
    stale = cache.get(heartbeats.BEAT_KEY)
    cache.set(heartbeats.BEAT_KEY, {**stale, "at": stale["at"] - 600}, 60)
    page = unescape(client.get(reverse("gradesync_health")).content.decode())
    assert re.search(r"beat \(sweeper, resync watchdog\): last beat heartbeat 60\d s ago", page)
