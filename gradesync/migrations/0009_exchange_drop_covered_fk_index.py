import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gradesync', '0008_delivery_drop_covered_fk_indexes'),
    ]

    # Every send inserts an exchange: its delivery's own index is the leading column of
    # exchange_delivery_idx (delivery, -attempted_at), so the foreign key's index is one write too many.
    # Only the index goes (as in 0008): AlterField would drop and re-validate the constraint.
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='deliveryexchange',
                    name='delivery',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='exchanges', to='gradesync.delivery'),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    "DROP INDEX IF EXISTS gradesync_deliveryexchange_delivery_id_064826d9",
                    reverse_sql="CREATE INDEX gradesync_deliveryexchange_delivery_id_064826d9 ON gradesync_deliveryexchange (delivery_id)",
                ),
            ],
        ),
    ]
