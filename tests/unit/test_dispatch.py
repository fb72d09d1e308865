"""The dispatcher's queue (wsgipool/dispatch.py), in milliseconds, on a real event loop."""

from __future__ import annotations

import asyncio

from wsgipool.dispatch import Dispatcher, ThreadSlots


def test_a_place_given_up_wakes_the_request_queued_behind_it() -> None:
    """A waiter's task is cancelled (its client left) while its slot frees up; a new
    request arriving before the task gives up its place queues behind it (FIFO).
    When the place is given up, the new request gets the free slot at once."""

    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        dispatcher: Dispatcher[ThreadSlots] = Dispatcher(queue_size=10, queue_timeout=30.0)
        slots = ThreadSlots(1)
        dispatcher.add(slots)
        assert dispatcher.try_acquire() is slots  # the one thread is busy
        first = dispatcher.enqueue(loop)
        first.cancel()  # what cancelling the task that awaits it does
        slots.busy -= 1  # the running request ends: its slot is free
        dispatcher.on_slot_free(slots)
        assert dispatcher.try_acquire() is None  # FIFO: someone is still counted ahead
        second = dispatcher.enqueue(loop)
        dispatcher.withdraw(first)  # the cancelled task's clean-up
        return second.done() and second.result() is slots

    assert asyncio.run(scenario())
