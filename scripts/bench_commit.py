#!/usr/bin/env python
"""400 results recorded in one transaction: what grade sync adds to the commit.

    flock /tmp/bench.lock env DATABASE_URL=postgres://postgres@127.0.0.1:5432/app \\
        CELERY_BROKER_URL=redis://127.0.0.1:6379/0 .venv/bin/python scripts/bench_commit.py \\
        [--results 400] [--repeats 5] [--redis-db 12] [--hook NAME]

With the helpers of scripts/bench_delivery.py (its own database `<name>_commit`, Redis dbs --redis-db
and the next, emptied; the sandbox LMS on gunicorn; one real Celery worker on the real Redis broker;
--registrations × --courses × --students × activities cells seeded on both sides), it times
--results `gradesync.api.record_result` calls inside one `transaction.atomic()` — each a different
cell, eligible — measuring

* the whole block: from entering the `with` to after it exits;
* the commit: from after the last record_result returns to after the `with` exits (the COMMIT and
  the on_commit hooks: grade sync's wake-up of the senders).

"Without grade sync" is the same transaction with grade sync's after-commit wake-up
(`gradesync.wakeups.wake_after_commit`, which the ledger calls; --hook names another) replaced by a
no-op, so that only the database COMMIT remains; its rows' senders are woken after the measurement
(`wake_senders`) so they drain like the others. Tasks published during each commit are counted
(Celery's `after_task_publish` signal).

One warm-up transaction (with grade sync, not counted), then --repeats of each, alternating (with,
without, with, …), each on fresh cells, the deliveries drained in between. It reports the medians,
and the last line is machine-readable (the issue's target: extra_ms ≤ 100):
`commit: results=400 with_sync_commit_ms=<n> without_sync_commit_ms=<n> extra_ms=<n> whole_tx_with_ms=<n> whole_tx_without_ms=<n>`
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import bench_delivery as bench  # noqa: E402


def find_hook(spec: str) -> tuple[object, str]:
    """Grade sync's after-commit wake-up, "module.function": (the module holding it, its name).
    Replacing that name in that module replaces it for the ledger, which looks it up there at each call."""
    import importlib

    module_name, _, name = spec.rpartition(".")
    module = importlib.import_module(module_name)
    if not callable(getattr(module, name, None)):
        sys.exit(f"bench_commit: {module.__name__} has no function {name!r}")
    return module, name


class Publishes:
    """Tasks Celery publishes while `counting` is set (the after_task_publish signal)."""

    def __init__(self) -> None:
        from celery.signals import after_task_publish

        self.count = 0
        self.counting = False
        after_task_publish.connect(self._published, weak=False)

    def _published(self, *args, **kwargs) -> None:
        if self.counting:
            self.count += 1


def one_transaction(cells: list, *, tag: str, rep: int, with_sync: bool, hook: tuple[object, str],
                    publishes: Publishes) -> dict:
    """record_result for each cell in one transaction; returns the timings and what it wrote."""
    from django.db import transaction
    from django.utils import timezone

    from gradesync import api

    owner, name = hook
    original = getattr(owner, name)
    calls = 0

    def no_op(*args, **kwargs) -> None:
        nonlocal calls
        calls += 1

    if not with_sync:
        setattr(owner, name, no_op)
    publishes.count, publishes.counting = 0, True
    result_ids = []
    try:
        started = time.perf_counter()
        with transaction.atomic():
            for i, cell in enumerate(cells):
                result = api.record_result(
                    source_ref=f"commit-{tag}-{rep}-{i}", lti_user=cell.lti_user, course=cell.course,
                    activity_key=cell.activity_key, activity_title=cell.activity_key, resource_link=cell.resource_link,
                    score=Decimal(50 + (rep * 7 + i) % 50) / 100, completed_at=timezone.now(), launch=cell.launch,
                    link_graded=True,
                )
                result_ids.append(result.pk)
            last_returned = time.perf_counter()
        ended = time.perf_counter()
    finally:
        publishes.counting = False
        setattr(owner, name, original)
    return {
        "whole_ms": (ended - started) * 1000, "commit_ms": (ended - last_returned) * 1000,
        "results": result_ids, "published": publishes.count, "hook_calls": calls,
    }


def settle(result_ids: list[int], *, wake: bool, timeout: float) -> tuple[int, bool]:
    """Wake the senders of rows nobody woke (the no-op run), then wait until the rows are sent."""
    from gradesync.models import Delivery

    rows = list(Delivery.objects.filter(result_id__in=result_ids).values_list("id", "registration_id", "is_resync"))
    if wake:
        bench.wake_senders()(rows)
    return len(rows), bench.wait_drained([r[0] for r in rows], timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=400, help="record_result calls in the transaction")
    parser.add_argument("--repeats", type=int, default=5, help="transactions with grade sync, and as many without")
    parser.add_argument("--hook", default="gradesync.wakeups.wake_after_commit",
                        help="the after-commit wake-up to no-op, module.function (what gradesync/ledger.py calls)")
    parser.add_argument("--registrations", type=int, default=2)
    parser.add_argument("--courses", type=int, default=2, help="courses per registration")
    parser.add_argument("--students", type=int, default=50, help="students per registration")
    parser.add_argument("--in-flight", type=int, default=8, help="max_requests_in_flight per registration")
    parser.add_argument("--concurrency", type=int, default=24, help="threads of the Celery worker")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to wait for a transaction's rows to be sent")
    parser.add_argument("--redis-db", type=int, default=12, help="broker db (the cache uses the next one)")
    parser.add_argument("--logs", default=str(ROOT / ".cache" / "bench-commit"), help="where process logs go")
    args = parser.parse_args(argv)

    bench.require_services()
    started_at = time.monotonic()
    load_start = bench.load_average()
    bench.log(f"load average at the start: {load_start} (1, 5, 15 min)")
    _, env = bench.setup_services(args.redis_db, "_commit")
    hook = find_hook(args.hook)
    hook_name = f"{hook[0].__name__}.{hook[1]}"
    publishes = Publishes()
    transactions = 1 + 2 * args.repeats
    per_cell_set = args.registrations * args.courses * args.students
    activities = -(-transactions * args.results // per_cell_set)
    processes = bench.Processes(Path(args.logs))
    tag = uuid.uuid4().hex[:6]
    try:
        port = bench.free_port()
        bench.start_sandbox(processes, env, port=port, workers=2, threads=8)
        regs, cells = bench.seed(port=port, registrations=args.registrations, courses=args.courses,
                                 students=args.students, activities=activities, profile="canvas",
                                 in_flight=args.in_flight, tag=tag)
        # Each transaction's cells spread over registrations, courses and students, as a burst's would.
        cells.sort(key=lambda c: (c.lti_user.pk * 7919 + c.course.pk * 104729 + hash(c.activity_key)) % 1000003)
        name = f"commit-{tag}-w0"
        bench.start_worker(processes, env, name=name, concurrency=args.concurrency, prefetch=8)
        bench.wait_for_workers([name])
        bench.log(f"seeded {len(cells)} cells ({args.registrations} registrations × {args.courses} courses × "
                  f"{args.students} students × {activities} activities); one worker × {args.concurrency} threads; "
                  f"without grade sync = {hook_name} replaced by a no-op")

        plan = [True] + [with_sync for _ in range(args.repeats) for with_sync in (True, False)]
        timings: dict[bool, list[dict]] = {True: [], False: []}
        for rep, with_sync in enumerate(plan):
            chunk = cells[rep * args.results:(rep + 1) * args.results]
            measured = one_transaction(chunk, tag=tag, rep=rep, with_sync=with_sync, hook=hook, publishes=publishes)
            rows, drained = settle(measured["results"], wake=not with_sync, timeout=args.drain_timeout)
            label = "warm-up" if rep == 0 else ("with grade sync" if with_sync else "without grade sync")
            bench.log(f"{rep:2d} {label:18s}: whole transaction {measured['whole_ms']:7.1f} ms, commit "
                      f"{measured['commit_ms']:7.1f} ms; {rows} deliveries, {measured['published']} tasks published"
                      + ("" if with_sync else f", hook no-op'd {measured['hook_calls']}×")
                      + ("" if drained else "; NOT drained"))
            if not with_sync and measured["hook_calls"] == 0:
                bench.log(f"WARNING: {hook_name} was never called: the no-op removed nothing "
                          "(the product queues its wake-up elsewhere now; name it with --hook)")
            if rep:
                timings[with_sync].append(measured)

        def median(with_sync: bool, key: str) -> float:
            return statistics.median(m[key] for m in timings[with_sync])

        with_commit, without_commit = median(True, "commit_ms"), median(False, "commit_ms")
        extra = with_commit - without_commit
        bench.log(f"medians of {args.repeats}: commit {with_commit:.1f} ms with grade sync, {without_commit:.1f} ms "
                  f"without: {extra:+.1f} ms (target ≤ 100); whole transaction {median(True, 'whole_ms'):.1f} ms with, "
                  f"{median(False, 'whole_ms'):.1f} ms without; tasks published per commit with grade sync: "
                  f"{sorted(m['published'] for m in timings[True])}")
        bench.log(f"total {time.monotonic() - started_at:.0f} s; logs in {args.logs}; load average at the start "
                  f"{load_start}, at the end {bench.load_average()}")
        print(f"commit: results={args.results} with_sync_commit_ms={with_commit:.1f} "
              f"without_sync_commit_ms={without_commit:.1f} extra_ms={extra:.1f} "
              f"whole_tx_with_ms={median(True, 'whole_ms'):.1f} whole_tx_without_ms={median(False, 'whole_ms'):.1f}",
              flush=True)
        return 0
    finally:
        processes.stop_all()


if __name__ == "__main__":
    sys.exit(main())
