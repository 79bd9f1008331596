"""WSGI entrypoint of the sandbox LMS on its own: `gunicorn sandbox_lms.wsgi:application` (see `sandbox_lms.api`)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sandbox_lms.server_settings")
application = get_wsgi_application()
