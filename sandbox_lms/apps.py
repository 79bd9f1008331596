from django.apps import AppConfig


class SandboxLmsConfig(AppConfig):
    name = "sandbox_lms"
    verbose_name = "Sandbox LMS (not for production)"
    default_auto_field = "django.db.models.BigAutoField"
