"""Sync health's hourly chart rolled up (DeliveryHour), and the index that tells when an hour changed.

A week's chart grouped the outbox's last 7 days by hour on every uncached page (~250 ms of a
~450 ms page at 1M deliveries). `gradesync.health.roll_up_delivery_hours` (beat) now counts each
closed hour once per institution and for all of them; the chart reads those counts, and the
outbox only for the current hour and for hours whose open rows changed since they were counted
(`delivery_open_updated_idx`: open rows only, by `updated_at`, covering the institution).
Nothing to backfill: an hour not rolled up yet is read from the outbox, as before.
"""
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("gradesync", "0006_delivery_answer_lost"),
        ("institutions", "0001_tenants_courses_and_audit"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeliveryHour",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("hour", models.DateTimeField(help_text="The hour's start (UTC).")),
                ("sent", models.PositiveIntegerField(default=0)),
                ("refused", models.PositiveIntegerField(default=0)),
                ("dead", models.PositiveIntegerField(default=0)),
                ("open", models.PositiveIntegerField(default=0, help_text="Pending, sending or retrying when counted.")),
                ("computed_at", models.DateTimeField()),
                (
                    "institution",
                    models.ForeignKey(
                        blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="+",
                        to="institutions.institution",
                        help_text="Empty: every institution's rows (the hour is counted even when it had none).",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(("institution__isnull", False)), fields=("hour", "institution"),
                        name="deliveryhour_one_per_institution",
                    ),
                    models.UniqueConstraint(
                        condition=models.Q(("institution__isnull", True)), fields=("hour",), name="deliveryhour_one_total",
                    ),
                ],
            },
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("status__in", ["pending", "sending", "retrying"])), fields=["updated_at"],
                include=("institution",), name="delivery_open_updated_idx",
            ),
        ),
    ]
