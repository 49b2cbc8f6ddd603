"""The Event recorder: a reconcile queues an Event and goes on; one thread sends them in order.

The apiserver side of sending (a real create, refusals logged) is covered by the cluster tests,
which read the Events back; here the sender is a list, to see order, drops and stopping.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from h2ogpt_operator.events import EventRecorder

OWNER: dict[str, Any] = {
    "apiVersion": "h2ogpt.dev/v1alpha1",
    "kind": "H2oGPTDeployment",
    "metadata": {"name": "demo", "namespace": "team", "uid": "0000-1111"},
}


class Sent:
    """Takes Events as the apiserver would; `gate` holds each send until it is set."""

    def __init__(self, fail_first: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_first = fail_first

    def post(self, event: dict[str, Any]) -> None:
        self.gate.wait()
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("not an apiserver refusal: a bug")
        self.events.append(event)

    @property
    def reasons(self) -> list[str]:
        return [event["reason"] for event in self.events]


def test_post_returns_before_the_apiserver_answers_and_events_go_in_order() -> None:
    sent = Sent()
    sent.gate.clear()  # the apiserver is slow
    recorder = EventRecorder(sent).start()
    started = time.monotonic()
    for reason in ("GeneratedSecret", "Applied", "NotReady", "Ready"):
        recorder.post_event(OWNER, reason, f"{reason} happened", warning=reason == "NotReady")
    assert time.monotonic() - started < 0.5
    assert sent.events == []
    sent.gate.set()
    assert recorder.close(5.0)
    assert sent.reasons == ["GeneratedSecret", "Applied", "NotReady", "Ready"]
    first, _, not_ready, _ = sent.events
    assert first["involvedObject"] == {
        "apiVersion": "h2ogpt.dev/v1alpha1",
        "kind": "H2oGPTDeployment",
        "name": "demo",
        "namespace": "team",
        "uid": "0000-1111",
    }
    assert first["metadata"] == {"generateName": "demo.", "namespace": "team"}
    assert (first["type"], not_ready["type"]) == ("Normal", "Warning")


def test_a_full_queue_drops_the_newest_and_counts_them() -> None:
    sent = Sent()
    dropped: list[int] = []
    recorder = EventRecorder(sent, capacity=2, on_dropped=lambda: dropped.append(1))
    for reason in ("First", "Second", "Third", "Fourth"):
        recorder.post_event(OWNER, reason, "m")  # not started yet: nothing leaves the queue
    assert len(dropped) == 2
    recorder.start()
    assert recorder.close(5.0)
    assert sent.reasons == ["First", "Second"]


def test_an_unexpected_error_in_one_send_does_not_stop_the_later_ones() -> None:
    sent = Sent(fail_first=True)
    recorder = EventRecorder(sent).start()
    recorder.post_event(OWNER, "Lost", "m")
    recorder.post_event(OWNER, "Kept", "m")
    assert recorder.close(5.0)
    assert sent.reasons == ["Kept"]


def test_stopping_waits_for_queued_events_but_not_past_its_deadline() -> None:
    sent = Sent()
    sent.gate.clear()  # the apiserver does not answer
    recorder = EventRecorder(sent).start()
    recorder.post_event(OWNER, "Stuck", "m")
    started = time.monotonic()
    assert recorder.close(0.3) is False
    assert time.monotonic() - started < 2.0
    sent.gate.set()  # let the daemon thread finish
