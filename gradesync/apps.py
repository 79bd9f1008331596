from django.apps import AppConfig


class GradesyncConfig(AppConfig):
    name = "gradesync"
    verbose_name = "Grade sync"

    def ready(self) -> None:
        # Register the tasks in every process (web, worker, tests): queue.py queues them by name.
        from . import tasks  # noqa: F401
