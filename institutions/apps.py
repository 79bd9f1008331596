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
        # A flushed or fresh database (tests, `flush`) gets its signing key back: the JWKS is never empty.
        post_migrate.connect(ensure_signing_key_after_migrate, dispatch_uid="institutions.ensure_signing_key")


def ensure_signing_key_after_migrate(sender: object, apps: object = None, **kwargs: object) -> None:
    if getattr(sender, "name", None) != "institutions":
        return
    from django.apps import apps as global_apps

    from .keys import ensure_signing_key

    apps = apps or global_apps  # `flush` sends no apps

    try:
        apps.get_model("institutions", "ToolKeyLifecycle")  # type: ignore[attr-defined]
    except LookupError:  # migrated back to before the key lifecycle
        return
    ensure_signing_key(apps)
