"""The view the ``django`` workload requests: a query, an aggregate and a template."""

from __future__ import annotations

from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from bench.apps.djangoapp.models import Item


def items(request: HttpRequest) -> HttpResponse:
    rows = list(Item.objects.all()[:50])
    stock = Item.objects.aggregate(total=Sum("stock"))["total"]
    return render(
        request,
        "djangoapp/items.html",
        {"title": "wsgipool bench", "items": rows, "total_stock": stock},
    )
