"""``Refreshed``: one load for a burst of callers, a reload once stale, failures not kept."""

import asyncio
import threading
import time

from smartcare.platform.refresh import Refreshed


class Source:
    def __init__(self, delay: float = 0.05):
        self.calls, self.delay, self.fail = 0, delay, False
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay)  # a database round trip, off the event loop
        if self.fail:
            raise RuntimeError("database away")
        return n


def test_a_burst_of_callers_shares_one_load_and_a_stale_value_is_loaded_again():
    source = Source()
    cached = Refreshed(source, ttl=0.3)

    async def burst():
        return await asyncio.gather(*(cached.get() for _ in range(64)))

    async def scenario():
        peeked = [cached.peek()]  # nothing loaded yet
        first = await burst()
        peeked.append(cached.peek())  # fresh: the value without a coroutine
        again = await burst()  # still fresh: no load
        await asyncio.sleep(0.35)
        peeked.append(cached.peek())  # stale: None, the caller must get() it
        later = await burst()
        return first, again, later, peeked

    first, again, later, peeked = asyncio.run(scenario())
    assert first == again == [1] * 64
    assert later == [2] * 64
    assert source.calls == 2
    assert peeked == [None, 1, None]


def test_a_cancelled_caller_does_not_cancel_the_others_load():
    source = Source(delay=0.2)
    cached = Refreshed(source, ttl=10)

    async def scenario():
        impatient = asyncio.ensure_future(cached.get())
        patient = asyncio.ensure_future(cached.get())
        await asyncio.sleep(0.05)
        impatient.cancel()
        return await patient

    assert asyncio.run(scenario()) == 1
    assert source.calls == 1


def test_a_failed_load_reaches_its_callers_and_is_tried_again_on_the_next_get():
    source = Source()
    source.fail = True
    cached = Refreshed(source, ttl=10)

    async def scenario():
        results = await asyncio.gather(cached.get(), cached.get(), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        source.fail = False
        return await cached.get()

    assert asyncio.run(scenario()) == 2
    assert source.calls == 2


def test_a_fresh_value_serves_another_event_loop_and_a_stale_one_is_loaded_on_it():
    source = Source()
    cached = Refreshed(source, ttl=0.2)
    assert asyncio.run(cached.get()) == 1
    assert asyncio.run(cached.get()) == 1
    time.sleep(0.25)
    assert asyncio.run(cached.get()) == 2

