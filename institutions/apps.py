from django.apps import AppConfig


class InstitutionsConfig(AppConfig):
    name = "institutions"
    verbose_name = "Institutions and onboarding"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from .roles import sync_staff_roles_after_migrate

        # Models added by later migrations get their permissions only after migrate;
        # keep the staff groups in step with ROLE_PERMISSIONS then.
        post_migrate.connect(sync_staff_roles_after_migrate, dispatch_uid="institutions.sync_staff_roles")
