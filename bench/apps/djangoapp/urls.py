from __future__ import annotations

from django.urls import path

from bench.apps.djangoapp import views

urlpatterns = [path("", views.items, name="items")]
