"""Public URLs of institutions (mounted at the site root by config/urls.py); paths from tool_configuration."""
from django.urls import path

from . import tool_configuration, views

urlpatterns = [
    path(tool_configuration.CANVAS_JSON_PATH, views.canvas_developer_key_json, name="canvas-developer-key-json"),
]
