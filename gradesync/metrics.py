"""`/metrics` in Prometheus's text format, for the on-call engineer's dashboards and alerts (README).

Counters (`gradesync_*_total`, the latency histogram) are the whole fleet's, kept in the shared cache by
the workers (gradesync.counters); gauges are read at scrape time from the outbox's small, indexed parts
(open rows only, never the sent millions) and from the cache (in-flight slots, heartbeats). Any web host
answers for all of them, so a scrape of the load balancer's address is enough.

Not public: a bearer token (METRICS_TOKEN) or an address in METRICS_NETWORKS (loopback by default).
"""
from __future__ import annotations

import datetime
import hmac
from collections import Counter

from django.conf import settings
from django.db.models import Count, Min
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from lti_tool.models import LtiRegistration
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from config.health import client_in

from . import counters, heartbeats, wakeups
from .models import OPEN_STATUSES, Delivery, ResyncJob, ResyncJobStatus

# What each shared counter is published as: (metric name without _total, help, its labels).
COUNTERS = {
    "lms_responses": ("gradesync_lms_responses", "Answers of LMSes to score and result requests, by LMS family and HTTP code (none: no answer).", ["family", "code"]),
    "deliveries_landed": ("gradesync_deliveries_landed", "Sends that ended, by result (sent, retrying, refused, dead, superseded).", ["result"]),
    "token_requests": ("gradesync_token_requests", "OAuth2 token requests to LMSes, by HTTP code (none: no answer).", ["code"]),
    "sweeper": ("gradesync_sweeper_rows", "Rows the sweeper reclaimed from dead workers, re-queued, or gave up on.", ["outcome"]),
}


def _registration_names(ids) -> dict[int, str]:
    return dict(LtiRegistration.objects.filter(pk__in=list(ids)).values_list("pk", "name"))


class GradeSyncCollector:
    """Reads everything at scrape time: nothing is kept in the web process between scrapes."""

    def collect(self):
        yield from self._counters(counters.read())
        # The open rows read once, by registration and state: the counts by state, the oldest per
        # registration, and which registrations have work (for the slots).
        by_state: Counter = Counter()
        oldest: dict[int, datetime.datetime] = {}
        for registration_id, state, n, first in (
            Delivery.objects.open().values_list("registration_id", "status")
            .annotate(n=Count("id"), first=Min("recorded_at")).values_list("registration_id", "status", "n", "first")
        ):
            by_state[state] += n
            oldest[registration_id] = min(first, oldest.get(registration_id, first))
        yield from self._outbox(by_state, oldest)
        yield from self._slots(set(oldest))
        yield from self._heartbeats()

    def _counters(self, totals: dict[str, float]):
        families = {key: CounterMetricFamily(name, text, labels=labels) for key, (name, text, labels) in COUNTERS.items()}
        buckets: dict[str, float] = {}
        latency_sum = 0.0
        for field, value in sorted(totals.items()):
            name, labels = counters.parse_field(field)
            if name in families:
                _, _, label_names = COUNTERS[name]
                families[name].add_metric([labels.get(label, "") for label in label_names], value)
            elif name == "delivery_latency_bucket":
                buckets[labels["le"]] = value
            elif name == "delivery_latency_sum":
                latency_sum = value
        yield from families.values()
        cumulative, running = [], 0.0
        for bound in [*map(str, counters.LATENCY_BUCKETS), "+Inf"]:
            running += buckets.get(bound, 0)
            cumulative.append((bound, running))
        histogram = HistogramMetricFamily(
            "gradesync_delivery_latency_seconds",
            "Live grades: seconds from the result's commit to the LMS's answer accepting it.",
        )
        histogram.add_metric([], cumulative, latency_sum)
        yield histogram

    def _outbox(self, by_state: Counter, oldest_by_registration: dict[int, datetime.datetime]):
        open_rows = GaugeMetricFamily("gradesync_deliveries_open", "Grades not yet in the LMS gradebook, by state.", labels=["state"])
        for state in OPEN_STATUSES:
            open_rows.add_metric([state], by_state.get(state, 0))
        yield open_rows

        oldest = GaugeMetricFamily(
            "gradesync_oldest_undelivered_age_seconds",
            "Age of the oldest grade not yet in the LMS, per LMS registration (only those with one).",
            labels=["registration", "registration_name"],
        )
        names = _registration_names(oldest_by_registration)
        now = timezone.now()
        for registration_id, recorded_at in sorted(oldest_by_registration.items()):
            oldest.add_metric([str(registration_id), names.get(registration_id, "")], max((now - recorded_at).total_seconds(), 0.0))
        yield oldest

        jobs = GaugeMetricFamily("gradesync_resync_jobs", "Resync jobs not finished, by state.", labels=["state"])
        by_job_state = dict(
            ResyncJob.objects.filter(status__in=[ResyncJobStatus.QUEUED, ResyncJobStatus.RUNNING])
            .values_list("status").annotate(n=Count("id")).values_list("status", "n")
        )
        for state in (ResyncJobStatus.QUEUED, ResyncJobStatus.RUNNING):
            jobs.add_metric([state.value], by_job_state.get(state, 0))
        yield jobs

    def _slots(self, open_registrations: set[int]):
        """In-flight slots held now, for every registration with open grades or a slot held."""
        used = GaugeMetricFamily("gradesync_inflight_slots_used", "Requests in flight to an LMS now (slots held), per registration.", labels=["registration"])
        limit = GaugeMetricFamily("gradesync_inflight_slots_limit", "The LMS's in-flight limit, per registration.", labels=["registration"])
        limits = wakeups.in_flight_limits(open_registrations)
        held = wakeups.slots_held(limits)
        limits.update(wakeups.in_flight_limits(set(held) - set(limits)))
        for registration_id in sorted(limits):
            used.add_metric([str(registration_id)], held[registration_id])
            limit.add_metric([str(registration_id)], limits[registration_id])
        yield used
        yield limit

    def _heartbeats(self):
        ages = GaugeMetricFamily(
            "gradesync_heartbeat_age_seconds",
            "Seconds since beat last published a periodic task, or a worker last ran the heartbeat (absent: never).",
            labels=["process"],
        )
        for process, age in heartbeats.ages().items():
            if age is not None:
                ages.add_metric([process], age)
        yield ages


def render() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GradeSyncCollector())
    return generate_latest(registry)


def may_scrape(request: HttpRequest) -> bool:
    """A bearer token equal to METRICS_TOKEN (when set), or an address in METRICS_NETWORKS."""
    token = settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    if token and given.startswith("Bearer ") and hmac.compare_digest(given[len("Bearer "):].encode(), token.encode()):
        return True
    return client_in(request, settings.METRICS_NETWORKS)


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not may_scrape(request):
        return HttpResponse(
            "Metrics are not public: send the METRICS_TOKEN as a bearer token, or scrape from an address in METRICS_NETWORKS.\n",
            status=403, content_type="text/plain; charset=utf-8",
        )
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
