"""Sync health, per institution and overall: counts by state, latency, backlog, refusals, and an hourly chart.

Every figure comes with the Delivery changelist filters that list the rows behind it, and each is
one query that reads the outbox's last week on an index (migration 0005), never the whole table:

- counts: one grouped query per page over the 7-day window (`delivery_window_idx`: updated_at,
  status, institution; an index-only scan), the 24 hours as a FILTER of it, per institution too;
- the chart: hours × states, from the hourly rollup (`DeliveryHour`, counted by beat) for every
  hour whose open rows still number what was counted (checked on `delivery_open_updated_idx`),
  and grouped in SQL (date_trunc) on the window index for the rest: the current hour, hours not
  rolled up yet, hours whose open rows moved on since;
- latency: recorded_at → sent_at of live grades (resyncs are batches and would hide the live
  figure), on `delivery_latency_idx` (sent live rows only). PostgreSQL's percentile_cont over each
  window, on a float (EXTRACT(EPOCH …) is numeric since PostgreSQL 14 and sorts several times
  slower) with enough work_mem to sort a week in memory; elsewhere, Python over the latest rows;
- the oldest undelivered grade: the first entry of `delivery_open_recorded_idx` (open rows only);
- refusals: grouped in SQL by status code and the advice our message starts with, on
  `delivery_refused_idx` (refused rows only).
"""
from __future__ import annotations

import datetime
import math
from collections import Counter
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models import Case, Count, F, Min, Q, TextField, Value, When
from django.db.models.functions import StrIndex, Substr, TruncHour
from django.utils import timezone

from institutions.models import Institution

from .models import OPEN_STATUSES, Delivery, DeliveryHour, DeliveryStatus

# The states support reads; "pending" includes rows a worker is sending right now.
STATES: dict[str, list[str]] = {
    "sent": [DeliveryStatus.SENT],
    "pending": [DeliveryStatus.PENDING, DeliveryStatus.SENDING],
    "retrying": [DeliveryStatus.RETRYING],
    "refused": [DeliveryStatus.REFUSED],
    "dead": [DeliveryStatus.DEAD],
}
STATE_LABELS = {"sent": "Sent", "pending": "Pending", "retrying": "Retrying", "refused": "Refused", "dead": "Failed (gave up)"}
FAILED = [DeliveryStatus.REFUSED, DeliveryStatus.DEAD]
WINDOWS = {"24h": datetime.timedelta(hours=24), "7d": datetime.timedelta(days=7)}
LATENCY_SAMPLE = 20000  # elsewhere than PostgreSQL
LATENCY_WORK_MEM = "32MB"  # a week of latencies (~200k floats at 1M deliveries) sorts in memory
REFUSAL_GROUPS = 200
TOP_REFUSALS = 8
MESSAGE_SPLIT = " LMS said: "  # our refusal messages: "<advice> LMS said: <the LMS's body>"


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")


def changelist_filters(*, institution_id: int | None = None, statuses: list[str] | None = None,
                       since: datetime.datetime | None = None, until: datetime.datetime | None = None,
                       **extra: str) -> dict[str, str]:
    """The Delivery changelist's query parameters for a figure (see DeliveryAdmin.list_filter)."""
    params: dict[str, str] = {}
    if statuses:
        if len(statuses) == 1:
            params["status__exact"] = statuses[0]
        else:
            params["status__in"] = ",".join(statuses)
    if institution_id is not None:
        params["institution__id__exact"] = str(institution_id)
    if since is not None:
        params["updated_at__gte"] = _iso(since)
    if until is not None:
        params["updated_at__lt"] = _iso(until)
    params.update(extra)
    return params


@dataclass(frozen=True)
class Figure:
    label: str
    value: int | float | str | None
    filters: dict[str, str]


@dataclass(frozen=True)
class Latency:
    p50: float | None
    p99: float | None
    sample: int
    exact: bool  # computed by the database over the whole window


@dataclass(frozen=True)
class Refusal:
    status_code: int | None
    reason: str
    count: int
    filters: dict[str, str]


@dataclass(frozen=True)
class Bucket:
    start: datetime.datetime
    sent: int
    failed: int
    other: int

    @property
    def total(self) -> int:
        return self.sent + self.failed + self.other


@dataclass(frozen=True)
class InstitutionRow:
    institution_id: int
    name: str
    counts: dict[str, Figure]


@dataclass(frozen=True)
class Health:
    institution: Institution | None
    now: datetime.datetime
    counts: dict[str, dict[str, Figure]]  # window → state → figure
    latency: dict[str, Latency]  # window → latency
    oldest_undelivered: Figure
    oldest_age_seconds: float | None
    refusals: list[Refusal]
    chart: list[Bucket]
    chart_hours: int
    per_institution: list[InstitutionRow]

    @property
    def oldest_age(self) -> str:
        return duration_words(self.oldest_age_seconds)


def duration_words(seconds: float | None) -> str:
    """"45 s", "6 min", "3 h 2 min", "8 d 8 h"; "—" for none."""
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours < 1:
        return f"{minutes} min"
    if days < 1:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


def _scoped(institution_id: int | None):
    rows = Delivery.objects.all()
    return rows.filter(institution_id=institution_id) if institution_id is not None else rows


def _window_counts(institution_id: int | None, now: datetime.datetime) -> dict[tuple[int, str], dict[str, int]]:
    """(institution id, status) → {window: rows updated within it}: one scan of the widest window."""
    widest = max(WINDOWS.values())
    # Count("status") rather than the pk: status is in the index, the pk is not (and never null either).
    aggregates = {
        name: Count("status", filter=Q(updated_at__gte=now - span)) if span != widest else Count("status")
        for name, span in WINDOWS.items()
    }
    grouped = (
        _scoped(institution_id).filter(updated_at__gte=now - widest)
        .values("institution_id", "status").annotate(**aggregates).order_by()
    )
    return {(row["institution_id"], row["status"]): {name: row[name] for name in WINDOWS} for row in grouped}


def _figures(table: dict[tuple[int, str], dict[str, int]], window: str, *, institution_id: int | None,
             since: datetime.datetime) -> dict[str, Figure]:
    """State → figure for one window, summed over the institutions in `table` (or only `institution_id`'s)."""
    by_status: Counter[str] = Counter()
    for (row_institution, status), counts in table.items():
        if institution_id is None or row_institution == institution_id:
            by_status[status] += counts[window]
    return {
        state: Figure(STATE_LABELS[state], sum(by_status[s] for s in statuses),
                      changelist_filters(institution_id=institution_id, statuses=statuses, since=since))
        for state, statuses in STATES.items()
    }


def percentile(values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks: the same definition as PostgreSQL's percentile_cont."""
    if not values:
        return None
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _latency(institution_id: int | None, since: datetime.datetime) -> Latency:
    if connection.vendor == "postgresql":
        # The same rows as below, in the terms of delivery_latency_idx's condition (an index-only scan).
        sql = (
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY date_part('epoch', sent_at - recorded_at)), "
            "count(*) FROM gradesync_delivery "
            "WHERE status = %s AND NOT is_resync AND sent_at IS NOT NULL AND updated_at >= %s"
        )
        params: list = [DeliveryStatus.SENT, since]
        if institution_id is not None:
            sql += " AND institution_id = %s"
            params.append(institution_id)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT set_config('work_mem', %s, true)", [LATENCY_WORK_MEM])  # this transaction only
            cursor.execute(sql, params)
            quantiles, count = cursor.fetchone()
        if not count:
            return Latency(None, None, 0, True)
        return Latency(float(quantiles[0]), float(quantiles[1]), count, True)
    rows = list(
        _scoped(institution_id)
        .filter(status=DeliveryStatus.SENT, is_resync=False, sent_at__isnull=False, updated_at__gte=since)
        .order_by("-updated_at")
        .values_list("recorded_at", "sent_at")[:LATENCY_SAMPLE]
    )
    seconds = [max((sent - recorded).total_seconds(), 0.0) for recorded, sent in rows]
    return Latency(percentile(seconds, 0.5), percentile(seconds, 0.99), len(seconds), len(rows) < LATENCY_SAMPLE)


def _refusals(institution_id: int | None, since: datetime.datetime) -> list[Refusal]:
    """The commonest refusals: grouped by status code and the advice our message starts with."""
    said = StrIndex("last_message", Value(MESSAGE_SPLIT))
    grouped = (
        _scoped(institution_id)
        .filter(status=DeliveryStatus.REFUSED, updated_at__gte=since)
        .alias(said=said)
        .annotate(advice=Case(
            When(said__gt=0, then=Substr("last_message", 1, F("said") - 1)), default=F("last_message"), output_field=TextField(),
        ))
        .values_list("last_status_code", "advice")
        .annotate(n=Count("*"))
        .order_by("-n")[:REFUSAL_GROUPS]
    )
    counts: Counter[tuple[int | None, str]] = Counter()
    for code, advice, n in grouped:
        counts[(code, (advice or "").strip()[:300] or "(no message)")] += n
    refusals = []
    for (code, reason), n in counts.most_common(TOP_REFUSALS):
        extra = {"last_status_code": str(code)} if code is not None else {"last_status_code__isnull": "True"}
        if reason != "(no message)":
            extra["last_message__startswith"] = reason
        refusals.append(Refusal(code, reason, n, changelist_filters(
            institution_id=institution_id, statuses=[DeliveryStatus.REFUSED], since=since, **extra)))
    return refusals


HOUR = datetime.timedelta(hours=1)
CHART_MAX_HOURS = 168  # the widest chart the page offers (?hours=168)
ROLLUP_GRACE = datetime.timedelta(minutes=5)  # an hour is rolled up once it ended this long ago
ROLLUP_RECOUNT_HOURS = 2  # every roll-up recounts the latest closed hours, whatever they look like
ROLLUP_KEEP = datetime.timedelta(days=31)
_ROLLUP_LOCK = 0x67736868  # pg_advisory_xact_lock key: one roll-up writes at a time
_COLUMN_OF = {
    DeliveryStatus.SENT: "sent", DeliveryStatus.REFUSED: "refused", DeliveryStatus.DEAD: "dead",
    **{status: "open" for status in OPEN_STATUSES},
}


def _hour_of(moment: datetime.datetime) -> datetime.datetime:
    return moment.astimezone(datetime.timezone.utc).replace(minute=0, second=0, microsecond=0)


def _spans(hours: list[datetime.datetime]) -> list[tuple[datetime.datetime, datetime.datetime]]:
    """Whole hours as contiguous [start, end) ranges."""
    spans: list[tuple[datetime.datetime, datetime.datetime]] = []
    for hour in sorted(hours):
        if spans and spans[-1][1] == hour:
            spans[-1] = (spans[-1][0], hour + HOUR)
        else:
            spans.append((hour, hour + HOUR))
    return spans


def _outbox_by_hour(institution_id: int | None, hours: list[datetime.datetime]) -> dict[tuple[datetime.datetime, int], Counter]:
    """(hour, institution id) → Counter(status → rows updated in that hour), grouped in SQL on the window index."""
    within = Q()
    for start, end in _spans(hours):
        within |= Q(updated_at__gte=start, updated_at__lt=end)
    grouped = (
        _scoped(institution_id)
        .filter(within)
        .annotate(hour=TruncHour("updated_at", tzinfo=datetime.timezone.utc))
        .values_list("hour", "institution_id", "status")
        .annotate(n=Count("*"))
        .order_by()
    )
    cells: dict[tuple[datetime.datetime, int], Counter] = {}
    for hour, row_institution, status, n in grouped:
        cells.setdefault((_hour_of(hour), row_institution), Counter())[status] += n
    return cells


def _open_by_hour(institution_id: int | None, start: datetime.datetime, end: datetime.datetime) -> dict[tuple[datetime.datetime, int], int]:
    """(hour, institution id) → open rows updated in that hour now, on `delivery_open_updated_idx`."""
    grouped = (
        _scoped(institution_id)
        .filter(status__in=OPEN_STATUSES, updated_at__gte=start, updated_at__lt=end)
        .annotate(hour=TruncHour("updated_at", tzinfo=datetime.timezone.utc))
        .values_list("hour", "institution_id")
        .annotate(n=Count("*"))
        .order_by()
    )
    return {(_hour_of(hour), row_institution): n for hour, row_institution, n in grouped}


def _summed(counts: dict[tuple[datetime.datetime, int], int]) -> dict[datetime.datetime, int]:
    total: Counter[datetime.datetime] = Counter()
    for (hour, _institution), n in counts.items():
        total[hour] += n
    return total


def _rolled_up(institution_id: int | None, start: datetime.datetime, end: datetime.datetime,
               open_now: dict[datetime.datetime, int]) -> dict[datetime.datetime, tuple[int, int, int]]:
    """hour → (sent, failed, open) from the rollup, for the hours whose counts still hold.

    An hour's rows keep their hour and only its open rows still change (see DeliveryHour): its
    counts hold while it has as many open rows as were counted. Hours counted before they ended
    are not trusted; an institution without a row in a counted hour had none.
    """
    rows = DeliveryHour.objects.filter(hour__gte=start, hour__lt=end)
    if institution_id is None:
        rows = rows.filter(institution__isnull=True)
    else:
        rows = rows.filter(Q(institution__isnull=True) | Q(institution_id=institution_id))
    counted: set[datetime.datetime] = set()
    own: dict[datetime.datetime, DeliveryHour] = {}
    for row in rows:
        hour = _hour_of(row.hour)
        if row.computed_at < hour + HOUR:
            continue
        if row.institution_id is None:
            counted.add(hour)
        if row.institution_id == institution_id:
            own[hour] = row
    held = {}
    for hour in counted:
        row = own.get(hour) or DeliveryHour(hour=hour)
        if row.open == open_now.get(hour, 0):
            held[hour] = (row.sent, row.refused + row.dead, row.open)
    return held


def _chart(institution_id: int | None, now: datetime.datetime, hours: int) -> list[Bucket]:
    """Rows by the hour of their `updated_at` (UTC), as they stand now: sent, failed (refused or
    dead), other (open). Each bar's link lists exactly its rows (changelist_filters on updated_at)."""
    end = _hour_of(now) + HOUR
    start = end - hours * HOUR
    moments = [start + index * HOUR for index in range(hours)]
    open_now = _summed(_open_by_hour(institution_id, start, end))
    cells = _rolled_up(institution_id, start, end, open_now)
    missing = [moment for moment in moments if moment not in cells]
    if missing:
        by_status: dict[datetime.datetime, Counter] = {}
        for (hour, _institution), counter in _outbox_by_hour(institution_id, missing).items():
            by_status.setdefault(hour, Counter()).update(counter)
        for hour in missing:
            counter = by_status.get(hour, Counter())
            sent, failed = counter[DeliveryStatus.SENT], sum(counter[s] for s in FAILED)
            cells[hour] = (sent, failed, sum(counter.values()) - sent - failed)
    return [Bucket(moment, *cells[moment]) for moment in moments]


@dataclass(frozen=True)
class RollUp:
    hours: int  # hours counted (again)
    rows: int  # DeliveryHour rows written
    pruned: int


def roll_up_delivery_hours(*, now: datetime.datetime | None = None, full: bool = False) -> RollUp:
    """Count the chart's closed hours into DeliveryHour, so that the chart need not group the outbox.

    Counts the hours of the widest chart that ended at least ROLLUP_GRACE ago (transactions that
    stamped a row before the hour ended have committed by then) and that were never counted,
    are among the latest ROLLUP_RECOUNT_HOURS, or whose open rows changed since they were
    counted; with `full`, every one of them (beat does that now and then: a delivered row
    deleted later changes no open count). Idempotent: the hours counted are deleted and written
    again in one transaction, one roll-up at a time. Rows older than ROLLUP_KEEP go.
    """
    now = now or timezone.now()
    first = _hour_of(now) - (CHART_MAX_HOURS - 1) * HOUR
    closed_end = _hour_of(now - ROLLUP_GRACE)
    closed = [first + index * HOUR for index in range(int((closed_end - first) / HOUR))]
    if full:
        due = set(closed)
    else:
        stored: dict[tuple[datetime.datetime, int | None], int] = {
            (_hour_of(hour), institution_id): open_rows
            for hour, institution_id, open_rows in DeliveryHour.objects.filter(hour__gte=first, hour__lt=closed_end)
            .values_list("hour", "institution_id", "open")
        }
        open_now: dict[tuple[datetime.datetime, int | None], int] = dict(_open_by_hour(None, first, closed_end))
        open_now.update({(hour, None): n for hour, n in _summed(open_now).items()})  # the all-institutions rows
        due = {hour for hour in closed if (hour, None) not in stored or hour >= closed_end - ROLLUP_RECOUNT_HOURS * HOUR}
        due |= {hour for (hour, institution_id), n in stored.items() if open_now.get((hour, institution_id), 0) != n}
        due &= set(closed)
    rows = 0
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ROLLUP_LOCK])
        if due:
            counted_at = timezone.now()  # before the count: a row changed during it makes its hour look changed
            per_hour: dict[tuple[datetime.datetime, int | None], Counter] = {(hour, None): Counter() for hour in due}
            for (hour, institution_id), counter in _outbox_by_hour(None, sorted(due)).items():
                per_hour.setdefault((hour, institution_id), Counter()).update(counter)
                per_hour[(hour, None)].update(counter)
            DeliveryHour.objects.filter(hour__in=sorted(due)).delete()
            written = []
            for (hour, institution_id), counter in per_hour.items():
                columns: Counter[str] = Counter()
                for status, n in counter.items():
                    columns[_COLUMN_OF[status]] += n
                written.append(DeliveryHour(hour=hour, institution_id=institution_id, computed_at=counted_at, **columns))
            DeliveryHour.objects.bulk_create(written, batch_size=1000)
            rows = len(written)
        pruned, _ = DeliveryHour.objects.filter(hour__lt=_hour_of(now - ROLLUP_KEEP)).delete()
    return RollUp(hours=len(due), rows=rows, pruned=pruned)


def _per_institution(table: dict[tuple[int, str], dict[str, int]], window: str, since: datetime.datetime) -> list[InstitutionRow]:
    return [
        InstitutionRow(institution.pk, institution.name,
                       _figures(table, window, institution_id=institution.pk, since=since))
        for institution in Institution.objects.order_by("name").only("pk", "name")
    ]


def sync_health(*, institution: Institution | None = None, now: datetime.datetime | None = None, chart_hours: int = 24) -> Health:
    now = now or timezone.now()
    institution_id = institution.pk if institution is not None else None
    table = _window_counts(institution_id, now)
    counts = {name: _figures(table, name, institution_id=institution_id, since=now - span) for name, span in WINDOWS.items()}
    latency = {name: _latency(institution_id, now - span) for name, span in WINDOWS.items()}
    oldest = _scoped(institution_id).filter(status__in=OPEN_STATUSES).aggregate(oldest=Min("recorded_at"))["oldest"]
    age = (now - oldest).total_seconds() if oldest else None
    oldest_figure = Figure("Oldest undelivered grade", oldest,
                           changelist_filters(institution_id=institution_id, statuses=list(OPEN_STATUSES)))
    return Health(
        institution=institution,
        now=now,
        counts=counts,
        latency=latency,
        oldest_undelivered=oldest_figure,
        oldest_age_seconds=age,
        refusals=_refusals(institution_id, now - WINDOWS["7d"]),
        chart=_chart(institution_id, now, chart_hours),
        chart_hours=chart_hours,
        per_institution=_per_institution(table, "24h", now - WINDOWS["24h"]) if institution is None else [],
    )


# --- The chart: inline SVG, rendered on the server --------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    sent_y: float
    sent_height: float
    failed_y: float
    failed_height: float
    other_y: float
    other_height: float
    bucket: Bucket
    filters: dict[str, str]
    failed_filters: dict[str, str]
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    top: int
    bottom: int
    left: int
    bars: list[Bar]
    maximum: int
    ticks: list[tuple[float, str]]  # (x, label)
    gridlines: list[tuple[float, int]]  # (y, value)


def chart_geometry(buckets: list[Bucket], *, institution_id: int | None, width: int = 960, height: int = 220) -> Chart:
    """Stacked hourly bars (sent, other, failed) scaled to the busiest hour; each bar links to its rows."""
    left, top, bottom = 44, 10, 28
    plot_w, plot_h = width - left - 10, height - top - bottom
    maximum = max((b.total for b in buckets), default=0) or 1
    slot = plot_w / max(len(buckets), 1)
    bar_w = max(slot * 0.8, 1.0)
    bars = []
    for index, bucket in enumerate(buckets):
        x = left + index * slot + (slot - bar_w) / 2
        scale = plot_h / maximum
        sent_h, other_h, failed_h = bucket.sent * scale, bucket.other * scale, bucket.failed * scale
        base = top + plot_h
        end = bucket.start + datetime.timedelta(hours=1)
        bars.append(Bar(
            x=round(x, 2), width=round(bar_w, 2),
            sent_y=round(base - sent_h, 2), sent_height=round(sent_h, 2),
            other_y=round(base - sent_h - other_h, 2), other_height=round(other_h, 2),
            failed_y=round(base - sent_h - other_h - failed_h, 2), failed_height=round(failed_h, 2),
            bucket=bucket,
            filters=changelist_filters(institution_id=institution_id, since=bucket.start, until=end),
            failed_filters=changelist_filters(institution_id=institution_id, statuses=FAILED, since=bucket.start, until=end),
            label=f"{bucket.start:%Y-%m-%d %H:00} UTC: {bucket.sent} sent, {bucket.failed} failed, {bucket.other} other",
        ))
    every = max(len(buckets) // 8, 1)
    ticks = [(b.x + b.width / 2, f"{b.bucket.start:%d %H:00}") for i, b in enumerate(bars) if i % every == 0]
    gridlines = [(round(top + plot_h - plot_h * f, 2), round(maximum * f)) for f in (0, 0.5, 1)]
    return Chart(width, height, top, bottom, left, bars, maximum, ticks, gridlines)
