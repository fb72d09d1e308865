"""Views of the test Django project."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.http import (
    FileResponse,
    Http404,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import render


def index(request):
    return render(request, "index.html", {"greeting": "héllo ünïcode"})


def form(request):
    if request.method == "POST":
        return JsonResponse(
            {
                "post": {key: request.POST.getlist(key) for key in request.POST},
                "csrf_cookie": bool(request.COOKIES.get("csrftoken")),
            }
        )
    return render(request, "form.html")


def upload(request):
    files = {}
    for field, upload in request.FILES.items():
        digest = hashlib.sha256()
        for chunk in upload.chunks():
            digest.update(chunk)
        files[field] = {
            "name": upload.name,
            "size": upload.size,
            "sha256": digest.hexdigest(),
            "content_type": upload.content_type,
        }
    return JsonResponse({"files": files, "post": request.POST.dict()})


def cookie_set(request):
    response = JsonResponse({"ok": True})
    response.set_cookie("flavour", "oatmeal", httponly=True)
    response.set_signed_cookie("signed", "trusted-value", salt="wsgipool")
    return response


def cookie_read(request):
    return JsonResponse(
        {
            "flavour": request.COOKIES.get("flavour"),
            "signed": request.get_signed_cookie("signed", default=None, salt="wsgipool"),
        }
    )


def cafe(request, name):
    return JsonResponse({"name": name, "path": request.path, "path_info": request.path_info})


def stream(request):
    flag = request.GET["flag"]

    def generate():
        yield b"start\n"
        deadline = time.monotonic() + 30
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.01)
        for index in range(3):
            yield f"row {index}\n".encode()
        yield b"end\n"

    return StreamingHttpResponse(generate(), content_type="text/plain")


def download(request, name):
    path = Path(settings.DATA_DIR) / name
    if not path.is_file() or path.parent != Path(settings.DATA_DIR):
        raise Http404(name)
    return FileResponse(open(path, "rb"), as_attachment=True, filename=name)


def db(request):
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY, path TEXT)")
        cursor.execute("INSERT INTO hits (path) VALUES (%s)", [request.path])
        cursor.execute("SELECT COUNT(*) FROM hits")
        (count,) = cursor.fetchone()
    return HttpResponse(f"hits={count} db={connection.settings_dict['NAME']}")
