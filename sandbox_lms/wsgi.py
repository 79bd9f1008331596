"""WSGI entrypoint of the sandbox LMS on its own: `gunicorn sandbox_lms.wsgi:application` (see `sandbox_lms.api`).

POST …/scores is answered by `sandbox_lms.fast.ScoresFront` before Django (pooled connections,
batched request log); every other request goes to Django.
"""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sandbox_lms.server_settings")
django_application = get_wsgi_application()

from sandbox_lms.fast import ScoresFront  # noqa: E402  (after Django is set up)

application = ScoresFront(django_application)
