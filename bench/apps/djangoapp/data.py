"""The rows the Django workload creates at startup; pure data, so the checks can import it."""

from __future__ import annotations

ITEM_COUNT = 20


def rows() -> list[dict[str, object]]:
    return [
        {"name": f"item number {i}", "price": f"{i * 1.25:.2f}", "stock": (i * 7) % 23}
        for i in range(1, ITEM_COUNT + 1)
    ]


STOCK_TOTAL = sum(int(str(row["stock"])) for row in rows())
