"""Test settings: the real settings plus the sandbox LMS and speed knobs only."""
import os

os.environ.setdefault("SANDBOX_LMS", "True")

from .settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
