from __future__ import annotations

from django.apps import AppConfig


class DjangoAppConfig(AppConfig):
    name = "bench.apps.djangoapp"
    label = "benchapp"
    default_auto_field = "django.db.models.BigAutoField"
