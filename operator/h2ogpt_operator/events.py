"""Events are sent off the reconcile path, one thread in order, as client-go's event recorder does.

An Event tells a person what the operator did; no reconcile needs its answer. Sent from the
reconcile worker, each cost that worker an apiserver round trip: four per stack while it
converges (GeneratedSecret, Applied, NotReady, Ready), a fifth of its writes, time that every
stack queued behind it waited too. Here the worker only builds the Event (stamped when it
happened) and queues it. The queue is bounded: when the apiserver cannot keep up, the newest
Events are dropped and counted rather than holding memory or a reconcile.

The autoscaler keeps `Kube.post_event`: it runs on its own task, one decision at a time, and its
callers read the Event right after the decision.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from h2ogpt_operator.kube import Manifest, event_manifest

log = logging.getLogger(__name__)

# client-go's broadcaster buffers 1000 Events too; a converging stack makes four.
CAPACITY = 1000


class EventSink(Protocol):
    def post_event(
        self, owner: Mapping[str, Any], reason: str, message: str, warning: bool = False
    ) -> None: ...


class EventPoster(Protocol):
    def post(self, event: Manifest) -> None: ...


class EventRecorder:
    """`post_event` queues and returns; a daemon thread sends the queued Events in order."""

    def __init__(
        self,
        kube: EventPoster,
        capacity: int = CAPACITY,
        on_dropped: Callable[[], None] = lambda: None,
    ) -> None:
        self._kube = kube
        self._queue: queue.Queue[Manifest | None] = queue.Queue(maxsize=capacity)
        self._on_dropped = on_dropped
        self._thread = threading.Thread(target=self._send_all, name="events", daemon=True)
        self._dropped = 0

    def start(self) -> EventRecorder:
        self._thread.start()
        return self

    def post_event(self, owner: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> None:
        event = event_manifest(owner, reason, message, warning)
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._dropped += 1
            self._on_dropped()
            # Once, then every 100th: a flood of warnings would only add to what is already too much.
            if self._dropped % 100 == 1:
                log.warning(
                    "events: %d queued, the apiserver is not keeping up; dropped %s on %s (%d so far)",
                    self._queue.maxsize, reason, owner["metadata"]["name"], self._dropped,
                )

    def close(self, timeout: float) -> bool:
        """Send what is queued, for at most `timeout` seconds; True when all of it went."""
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _send_all(self) -> None:
        while (event := self._queue.get()) is not None:
            try:
                self._kube.post(event)  # logs the apiserver's refusals itself
            except Exception:  # anything else must not end the thread and silently drop every later Event
                log.exception("events: cannot send %s", event.get("reason"))
