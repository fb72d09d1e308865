"""WSGI entry point of the ``django`` workload: ``bench.apps.djangoapp.wsgi:application``.

At import, the SQLite database is created (tables, then the rows of `data.rows()`) under a
file lock, so that servers importing the app in several processes at once agree;
then every connection is closed, so none crosses a fork into a worker.
"""

from __future__ import annotations

import fcntl
import os
import threading

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.apps.djangoapp.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connections  # noqa: E402

from bench.apps.djangoapp.data import rows  # noqa: E402
from bench.apps.djangoapp.models import Item  # noqa: E402


def prepare_database() -> None:
    db_path = str(settings.DATABASES["default"]["NAME"])
    os.makedirs(os.path.dirname(db_path), exist_ok=True)
    with open(db_path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            call_command("migrate", run_syncdb=True, verbosity=0, interactive=False)
            if not Item.objects.exists():
                Item.objects.bulk_create(Item(**row) for row in rows())
        finally:
            connections.close_all()
            fcntl.flock(lock, fcntl.LOCK_UN)


def _prepare_in_a_thread() -> None:
    # Some servers import the app inside a running event loop (uvicorn; wsgipool with
    # --workers 0), where Django refuses synchronous database calls: run them in a thread.
    errors: list[BaseException] = []

    def target() -> None:
        try:
            prepare_database()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="prepare-database")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


_prepare_in_a_thread()
application = get_wsgi_application()
