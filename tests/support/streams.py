"""A streamed chat answer whose server is told to stop partway (a pod deleted, a SIGTERM sent)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from openai import OpenAI


@dataclass(frozen=True)
class StoppedStream:
    chunks_at_stop: int | None  # chunks read when `stop` was called (None: no content ever came)
    chunks: int  # chunks read in all
    finish_reason: str | None
    ran_on_s: float  # seconds from `stop` returning to the stream's end


def stream_through_a_stop(
    client: OpenAI, model: str, max_tokens: int, stop: Callable[[], object]
) -> StoppedStream:
    """Stream a long answer (temperature 0) and call `stop` once its first text has arrived. An error
    event raises openai.APIError here."""
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    )
    chunks, finish, chunks_at_stop, stopped_at = 0, None, None, 0.0
    for chunk in stream:
        if not chunk.choices:
            continue
        chunks += 1
        finish = chunk.choices[0].finish_reason or finish
        if chunks_at_stop is None and chunk.choices[0].delta.content:
            stop()
            chunks_at_stop, stopped_at = chunks, time.monotonic()
    ran_on = time.monotonic() - stopped_at if chunks_at_stop is not None else 0.0
    return StoppedStream(chunks_at_stop, chunks, finish, ran_on)
