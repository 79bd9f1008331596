"""Grade sync changelists at scale: the query count does not grow with the rows; the filters health links to work."""
from __future__ import annotations

import datetime
import itertools
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gradesync.admin_paging import EstimatedCountPaginator
from gradesync.models import Delivery, DeliveryStatus, ResyncJob, ResyncJobStatus, Result
from institutions.roles import READ_ONLY, SUPPORT
from tests.courseware_factories import LtiUserFactory
from tests.factories import ContextFactory, CourseFactory

pytestmark = pytest.mark.django_db
_n = itertools.count(1)


def add_rows(institutions, count: int) -> None:
    """`count` results, deliveries and resync jobs across both institutions, courses without titles
    (so Course.__str__ reads its context) and a learner each."""
    for index in range(count):
        institution = institutions[index % 2]
        course = CourseFactory(institution=institution, title="")
        user = LtiUserFactory(registration=course.deployment.registration)
        result = Result.objects.create(
            source_ref=f"cl-{next(_n)}", lti_user=user, course=course, activity_key="a", score=Decimal("0.5"),
            completed_at=timezone.now(), is_eligible=index % 3 != 0,
        )
        Delivery.objects.create(
            result=result, course=course, institution=institution, registration=course.deployment.registration,
            deployment=course.deployment, lti_user=user, activity_key="a", score=Decimal("0.5"),
            status=[DeliveryStatus.SENT, DeliveryStatus.REFUSED, DeliveryStatus.PENDING][index % 3],
            recorded_at=timezone.now(), sent_at=timezone.now() if index % 3 == 0 else None,
        )
        ResyncJob.objects.create(institution=institution, course=course, lti_user=user, status=ResyncJobStatus.DONE,
                                 requested_by_name="support")


PAGES = [
    ("admin:gradesync_delivery_changelist", {}),
    ("admin:gradesync_delivery_changelist", {"status__exact": "refused"}),
    ("admin:gradesync_result_changelist", {}),
    ("admin:gradesync_result_changelist", {"is_eligible__exact": "1"}),
    ("admin:gradesync_resyncjob_changelist", {}),
    ("admin:gradesync_syncwarning_changelist", {}),
]


def queries_for(client, name: str, params: dict) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(reverse(name), params)
    assert response.status_code == 200
    return len(captured)


@pytest.mark.parametrize("name,params", PAGES)
def test_query_count_does_not_grow_with_rows(name, params, two_institutions, client_for):
    client = client_for(SUPPORT)
    add_rows(two_institutions, 3)
    few = queries_for(client, name, params)
    add_rows(two_institutions, 27)
    many = queries_for(client, name, params)
    assert few == many, f"{name}: {few} queries with 3 rows, {many} with 30"


def test_the_changelist_lists_each_row_once_per_page(two_institutions, client_for):
    add_rows(two_institutions, 30)
    response = client_for(READ_ONLY).get(reverse("admin:gradesync_delivery_changelist"))
    assert len(response.context["cl"].result_list) == 30
    assert response.context["cl"].full_result_count is None  # show_full_result_count = False


def test_the_filters_health_links_to(two_institutions, client_for):
    north, south = two_institutions
    add_rows(two_institutions, 6)
    old = Delivery.objects.filter(institution=north).order_by("id").first()
    Delivery.objects.filter(pk=old.pk).update(updated_at=timezone.now() - datetime.timedelta(days=3))
    client = client_for(SUPPORT)
    url = reverse("admin:gradesync_delivery_changelist")

    def ids(**params):
        response = client.get(url, params)
        assert response.status_code == 200, params
        return {d.pk for d in response.context["cl"].result_list}

    since = (timezone.now() - datetime.timedelta(days=1)).isoformat(timespec="seconds")
    assert ids(institution__id__exact=north.pk) == set(Delivery.objects.filter(institution=north).values_list("pk", flat=True))
    assert ids(status__in="sent,refused") == set(Delivery.objects.filter(status__in=["sent", "refused"]).values_list("pk", flat=True))
    assert old.pk not in ids(updated_at__gte=since)
    assert ids(updated_at__lt=since) == {old.pk}
    assert ids(sent_at__isnull="True") == set(Delivery.objects.filter(sent_at__isnull=True).values_list("pk", flat=True))
    # The sidebar offers them too.
    body = client.get(url).content.decode()
    for title in ("By status", "By institution", "By updated at", "By sent at"):
        assert title in body


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the estimated count is PostgreSQL's pg_class.reltuples")
def test_the_unfiltered_count_is_the_planner_estimate_on_postgresql(two_institutions):
    add_rows(two_institutions, 12)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE gradesync_delivery")
    paginator = EstimatedCountPaginator(Delivery.objects.order_by("-id"), 100)
    paginator.exact_below = 5
    assert paginator.count == 12  # reltuples after ANALYZE
    filtered = EstimatedCountPaginator(Delivery.objects.filter(status="refused").order_by("-id"), 100)
    filtered.exact_below = 2
    assert filtered.count >= 3  # bounded exact count, then the plan's estimate


def test_a_small_table_is_counted_exactly(two_institutions):
    add_rows(two_institutions, 4)
    assert EstimatedCountPaginator(Delivery.objects.order_by("-id"), 100).count == 4
    assert EstimatedCountPaginator(Delivery.objects.filter(status="refused").order_by("-id"), 100).count == 1


def test_search_by_id_sub_or_email_uses_exact_matches(two_institutions, client_for):
    add_rows(two_institutions, 4)
    delivery = Delivery.objects.select_related("lti_user").order_by("id").last()
    delivery.lti_user.email = "Ada@North.example.edu"
    delivery.lti_user.save()
    client = client_for(SUPPORT)
    url = reverse("admin:gradesync_delivery_changelist")
    for term in (str(delivery.pk), f"#{delivery.pk}", delivery.lti_user.sub, "ada@north.example.edu"):
        assert [d.pk for d in client.get(url, {"q": term}).context["cl"].result_list] == [delivery.pk], term
    results = client.get(reverse("admin:gradesync_result_changelist"), {"q": delivery.lti_user.sub}).context["cl"].result_list
    assert [r.lti_user_id for r in results] == [delivery.lti_user_id]


def test_launch_role_filter_is_a_fixed_list(two_institutions, client_for, django_assert_max_num_queries):
    add_rows(two_institutions, 3)
    Result.objects.filter(pk=Result.objects.order_by("id").first().pk).update(launch_role="instructor")
    client = client_for(SUPPORT)
    response = client.get(reverse("admin:gradesync_result_changelist"), {"launch_role": "instructor"})
    assert [r.launch_role for r in response.context["cl"].result_list] == ["instructor"]
    assert "No LTI launch (direct login)" in response.content.decode()
    assert len(client.get(reverse("admin:gradesync_result_changelist"), {"launch_role": "none"}).context["cl"].result_list) == 2


def test_only_columns_an_index_orders_are_sortable(two_institutions, client_for):
    add_rows(two_institutions, 6)
    client = client_for(SUPPORT)
    url = reverse("admin:gradesync_delivery_changelist")
    columns = list(client.get(url).context["cl"].list_display)
    newest_first = list(Delivery.objects.order_by("-id").values_list("pk", flat=True))

    def order(column: str, descending: bool = False) -> list[int]:
        number = columns.index(column)
        response = client.get(url, {"o": f"-{number}" if descending else number})
        return [d.pk for d in response.context["cl"].result_list]

    # A learner's name or a score has no index: a crafted ?o= is ignored, not a sort of the table.
    assert order("learner") == newest_first
    assert order("grade", descending=True) == newest_first
    by_course = list(Delivery.objects.order_by("course_id", "-id").values_list("pk", flat=True))
    assert order("course") == by_course
    body = client.get(url).content.decode()
    assert f"?o={columns.index('updated')}" in body and f"?o={columns.index('learner')}" not in body


def test_a_search_that_matches_nobody_lists_nothing(two_institutions, client_for):
    add_rows(two_institutions, 3)
    client = client_for(SUPPORT)
    for name in ("admin:gradesync_delivery_changelist", "admin:gradesync_result_changelist"):
        with CaptureQueriesContext(connection) as captured:
            response = client.get(reverse(name), {"q": "nobody@nowhere.example"})
        assert list(response.context["cl"].result_list) == []
        # The learner lookup, then nothing over the big table (the ids are known to be none).
        assert not [q for q in captured if "gradesync_delivery" in q["sql"] or "gradesync_result" in q["sql"]], name


def test_the_resync_sent_at_and_launch_role_filters(two_institutions, client_for):
    add_rows(two_institutions, 6)
    Delivery.objects.filter(pk=Delivery.objects.order_by("id").first().pk).update(is_resync=True)
    client = client_for(READ_ONLY)
    deliveries = reverse("admin:gradesync_delivery_changelist")
    resynced = client.get(deliveries, {"is_resync__exact": "1"}).context["cl"].result_list
    assert [d.pk for d in resynced] == list(Delivery.objects.filter(is_resync=True).values_list("pk", flat=True))
    today = client.get(deliveries, {"sent_at__gte": timezone.now().replace(hour=0, minute=0, second=0, microsecond=0).isoformat()}).context["cl"].result_list
    assert {d.pk for d in today} == set(Delivery.objects.filter(sent_at__isnull=False).values_list("pk", flat=True))
    nobody = client.get(reverse("admin:gradesync_result_changelist"), {"launch_role": "none", "is_eligible__exact": "0"})
    assert {r.pk for r in nobody.context["cl"].result_list} == set(
        Result.objects.filter(launch_role="", is_eligible=False).values_list("pk", flat=True)
    )
