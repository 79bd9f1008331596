"""/metrics for Prometheus: not public, and its series tell on-call what the outbox and the LMSes are doing."""
from __future__ import annotations

import pytest
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from gradesync import counters, heartbeats
from gradesync.models import Delivery, DeliveryStatus
from sandbox_lms import api as sandbox
from tests.gradesync.test_delivery import Classroom

pytestmark = pytest.mark.django_db(transaction=True)

NAMED_SERIES = {
    "gradesync_deliveries_open",
    "gradesync_deliveries_landed",  # counters are parsed without _total
    "gradesync_oldest_undelivered_age_seconds",
    "gradesync_delivery_latency_seconds",
    "gradesync_lms_responses",
    "gradesync_token_requests",
    "gradesync_resync_jobs",
    "gradesync_sweeper_rows",
    "gradesync_inflight_slots_used",
    "gradesync_inflight_slots_limit",
    "gradesync_heartbeat_age_seconds",
}


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    families = set()
    for family in text_string_to_metric_families(response.content.decode()):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    samples[("families", ())] = families
    return samples


def test_metrics_are_refused_from_outside_the_allowed_networks_without_the_token(client):
    with override_settings(METRICS_TOKEN="s3cret-scrape-token", METRICS_NETWORKS=["10.9.0.0/16"]):
        refused = client.get("/metrics", REMOTE_ADDR="192.0.2.7")
        assert refused.status_code == 403
        assert b"METRICS_TOKEN" in refused.content and b"gradesync_" not in refused.content
        wrong = client.get("/metrics", REMOTE_ADDR="192.0.2.7", HTTP_AUTHORIZATION="Bearer guess")
        assert wrong.status_code == 403
        assert client.get("/metrics", REMOTE_ADDR="192.0.2.7", HTTP_AUTHORIZATION="Bearer s3cret-scrape-token").status_code == 200
        assert client.get("/metrics", REMOTE_ADDR="10.9.4.2").status_code == 200
    with override_settings(METRICS_TOKEN="", METRICS_NETWORKS=[]):
        # No token configured: an empty bearer is not a match.
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_every_named_series_is_published_on_an_empty_outbox(client):
    samples = scrape(client)
    assert NAMED_SERIES <= samples[("families", ())]
    assert samples[("gradesync_deliveries_open", (("state", "pending"),))] == 0


@pytest.fixture
def canvas(live_server, two_institutions):
    return Classroom(live_server.url, two_institutions[0], "canvas")


def test_a_delivered_grade_and_a_failing_lms_show_in_the_series(client, canvas):
    student, other = canvas.connected.students[:2]
    canvas.finish(canvas.launch(student), "0.8")
    assert Delivery.objects.get().status == DeliveryStatus.SENT
    heartbeats.beat_published()

    samples = scrape(client)
    assert samples[("gradesync_lms_responses_total", (("code", "200"), ("family", "canvas")))] == 1
    assert samples[("gradesync_deliveries_landed_total", (("result", "sent"),))] == 1
    assert samples[("gradesync_token_requests_total", (("code", "200"),))] >= 1  # the notice handler registration asks too
    assert samples[("gradesync_delivery_latency_seconds_count", ())] == 1
    assert samples[("gradesync_delivery_latency_seconds_bucket", (("le", "+Inf"),))] == 1
    assert 0 < samples[("gradesync_delivery_latency_seconds_sum", ())] < 5
    assert samples[("gradesync_heartbeat_age_seconds", (("process", "beat"),))] < 5
    assert not [key for key in samples if key[0] == "gradesync_oldest_undelivered_age_seconds"]

    # The LMS fails: the grade waits, and its age and the 500s show.
    registration = canvas.connected.seeded.registration
    sandbox.set_faults(registration=registration, error_rate=1.0)
    sandbox.forget_caches()
    canvas.finish(canvas.launch(other), "0.5")
    waiting = Delivery.objects.get(status=DeliveryStatus.RETRYING)
    samples = scrape(client)
    assert samples[("gradesync_deliveries_open", (("state", "retrying"),))] == 1
    server_errors = [value for (name, labels), value in samples.items()
                     if name == "gradesync_lms_responses_total" and dict(labels)["code"].startswith("5")]
    assert sum(server_errors) >= 1
    assert samples[("gradesync_deliveries_landed_total", (("result", "retrying"),))] >= 1
    labels = (("registration", str(waiting.registration_id)), ("registration_name", waiting.registration.name))
    assert 0 <= samples[("gradesync_oldest_undelivered_age_seconds", labels)] < 30
    # The sent grade's latency is still the only one counted: a retry is not a landing in the gradebook.
    assert samples[("gradesync_delivery_latency_seconds_count", ())] == 1
    assert samples[("gradesync_inflight_slots_limit", (("registration", str(waiting.registration_id)),))] == 4
    # A sender at work holds a slot: it shows as used.
    from django.core.cache import cache

    from gradesync import wakeups

    cache.add(wakeups.slot_keys(waiting.registration_id, 4)[2], 1, 30)
    samples = scrape(client)
    assert samples[("gradesync_inflight_slots_used", (("registration", str(waiting.registration_id)),))] == 1


def test_counting_never_costs_a_grade_when_the_cache_is_down(canvas, monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr(counters, "redis_client", down)
    canvas.finish(canvas.launch(canvas.connected.students[0]), "0.6")
    assert Delivery.objects.get().status == DeliveryStatus.SENT
