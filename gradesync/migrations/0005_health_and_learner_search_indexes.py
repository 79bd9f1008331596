"""Indexes for sync health, the changelists' filters and finding a learner, so that none of them
reads a whole table at scale.

The outbox's: sync health reads the last week (counts, chart, latency), the open rows (oldest
undelivered grade) and the refused rows (top reasons) on indexes of their own; the window index
starts with updated_at, so it replaces `delivery_updated_idx`. The changelists' is_resync and
sent_at filters (outbox) and launch role filter (ledger) get theirs: without, a value that
matches nothing was two scans of the table (300 ms at 1M rows).

Index-only scans skip the heap only on pages the visibility map marks all-visible, which only
VACUUM does; on PostgreSQL the outbox is vacuumed (and analysed) at 2 % changed rows instead of
20 %, so that a day of sending leaves at most a few hours of pages for sync health to visit (on
the 1M-row bench, a day of rows updated and not yet vacuumed took the page from ~210 to ~300 ms;
770 ms when those rows were spread over every page of the table).

django-lti's LtiUser table gets the indexes the admin's learner search uses (gradesync.admin,
gradesync.diagnostics.learners_matching): the LMS user id alone (the unique index starts with the
registration), the email case-insensitively, and — on PostgreSQL — a trigram index for a name
anywhere in the learner's name. They are made here, by SQL, because the model is not ours.
"""
from django.db import DatabaseError, migrations, models, transaction

LEARNER_INDEXES = {
    "ltiuser_sub_idx": "CREATE INDEX IF NOT EXISTS ltiuser_sub_idx ON lti_tool_ltiuser (sub)",
    # Matches Django's iexact on PostgreSQL: UPPER(email::text) = UPPER(%s).
    "ltiuser_email_upper_idx": "CREATE INDEX IF NOT EXISTS ltiuser_email_upper_idx ON lti_tool_ltiuser (UPPER(email))",
}
# Matches Django's icontains on PostgreSQL: UPPER(name::text) LIKE UPPER(%s).
NAME_TRIGRAM_INDEX = (
    "CREATE INDEX IF NOT EXISTS ltiuser_name_trgm_idx ON lti_tool_ltiuser USING gin (UPPER(name) gin_trgm_ops)"
)


def add_learner_indexes(apps, schema_editor) -> None:
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        for sql in LEARNER_INDEXES.values():
            cursor.execute(sql)
    if connection.vendor != "postgresql":
        return
    try:
        # pg_trgm is a trusted extension (PostgreSQL 13+): the database's owner may create it.
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            cursor.execute(NAME_TRIGRAM_INDEX)
    except DatabaseError:
        # Without the extension a name search scans the LTI user table; everything else still works.
        pass


OUTBOX_VACUUM = ("autovacuum_vacuum_scale_factor", "autovacuum_vacuum_insert_scale_factor", "autovacuum_analyze_scale_factor")


def vacuum_outbox_often(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        settings = ", ".join(f"{name} = 0.02" for name in OUTBOX_VACUUM)
        schema_editor.execute(f"ALTER TABLE gradesync_delivery SET ({settings})")


def vacuum_outbox_by_default(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE gradesync_delivery RESET ({', '.join(OUTBOX_VACUUM)})")


def drop_learner_indexes(apps, schema_editor) -> None:
    with schema_editor.connection.cursor() as cursor:
        for name in [*LEARNER_INDEXES, "ltiuser_name_trgm_idx"]:
            cursor.execute(f"DROP INDEX IF EXISTS {name}")  # the extension stays: others may use it


class Migration(migrations.Migration):

    dependencies = [
        ("gradesync", "0004_delivery_registration_due"),
        ("institutions", "0002_create_staff_roles"),
        ("lti_tool", "0008_ltideployment_pns_url_and_more"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="delivery",
            name="delivery_updated_idx",
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(fields=["updated_at", "status", "institution"], name="delivery_window_idx"),
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("is_resync", False), ("status", "sent")), fields=["updated_at"],
                include=("recorded_at", "sent_at", "institution"), name="delivery_latency_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("status__in", ["pending", "sending", "retrying"])), fields=["recorded_at"],
                include=("institution",), name="delivery_open_recorded_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("status", "refused")), fields=["updated_at", "institution"], name="delivery_refused_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(condition=models.Q(("is_resync", True)), fields=["-id"], name="delivery_resync_rows_idx"),
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(condition=models.Q(("sent_at__isnull", False)), fields=["sent_at"], name="delivery_sent_at_idx"),
        ),
        migrations.AddIndex(
            model_name="result",
            index=models.Index(fields=["launch_role", "is_eligible", "-id"], name="result_role_eligible_idx"),
        ),
        migrations.RunPython(vacuum_outbox_often, vacuum_outbox_by_default),
        migrations.RunPython(add_learner_indexes, drop_learner_indexes),
    ]
