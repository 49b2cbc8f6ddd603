"""Where /v1/responses keeps each stored response's conversation, so that `previous_response_id`
can continue it: the newest RESPONSES_KEPT, each for RESPONSES_TTL_S. In this process's memory,
or, under --workers N, in a SQLite file all the workers share (a continuation may reach any of
them). Behind several replicas a continuation must still reach the same one.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from h2ogpt_api.errors import ApiError
from h2ogpt_api.openai_api.protocol import MessageIn
from h2ogpt_api.workers import open_state_db

RESPONSES_KEPT = 1024
RESPONSES_TTL_S = 3600.0


@dataclass(frozen=True)
class StoredConversation:
    owner: str  # who may continue it (the identity's name)
    messages: tuple[MessageIn, ...]  # every turn so far, the stored answer last; not instructions
    stored_at: float


class ConversationStore:
    """Bounded, in-memory: the oldest entry goes when full, any entry after its time to live.
    State lives in one process: behind several replicas a continuation must reach the same one."""

    def __init__(self, capacity: int = RESPONSES_KEPT, ttl_s: float = RESPONSES_TTL_S) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, StoredConversation] = OrderedDict()

    def put(self, response_id: str, conversation: StoredConversation) -> None:
        self._entries[response_id] = conversation
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, response_id: str, owner: str) -> StoredConversation:
        entry = self._entries.get(response_id)
        if entry is not None and time.monotonic() - entry.stored_at > self.ttl_s:
            del self._entries[response_id]
            entry = None
        if entry is None or entry.owner != owner:
            raise _not_stored(response_id, self.capacity, self.ttl_s)
        return entry


class Conversations(Protocol):
    def put(self, response_id: str, conversation: StoredConversation) -> None: ...

    def get(self, response_id: str, owner: str) -> StoredConversation: ...


def _not_stored(response_id: str, capacity: int, ttl_s: float) -> ApiError:
    return ApiError(
        400,
        f"previous response {response_id!r} is not stored here (kept {ttl_s:.0f} s, "
        f"the newest {capacity}, on this server)",
        param="previous_response_id",
        code="previous_response_not_found",
    )


class SharedConversations:
    """The same store in a SQLite file that every worker process opens. Each call is one short
    statement on a local file (well under a millisecond), so it runs on the event loop."""

    def __init__(self, path: Path, capacity: int = RESPONSES_KEPT, ttl_s: float = RESPONSES_TTL_S) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._db = open_state_db(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS conversations "
            "(id TEXT PRIMARY KEY, owner TEXT NOT NULL, messages TEXT NOT NULL, stored_at REAL NOT NULL)"
        )

    def put(self, response_id: str, conversation: StoredConversation) -> None:
        # stored_at is on this process's monotonic clock; the file holds wall-clock time, which
        # every worker shares.
        stored_at = time.time() - (time.monotonic() - conversation.stored_at)
        messages = json.dumps([message.model_dump() for message in conversation.messages])
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO conversations VALUES (?, ?, ?, ?)",
                (response_id, conversation.owner, messages, stored_at),
            )
            self._db.execute(
                "DELETE FROM conversations WHERE id NOT IN "
                "(SELECT id FROM conversations ORDER BY stored_at DESC LIMIT ?)",
                (self.capacity,),
            )

    def get(self, response_id: str, owner: str) -> StoredConversation:
        row = self._db.execute(
            "SELECT owner, messages, stored_at FROM conversations WHERE id = ?", (response_id,)
        ).fetchone()
        if row is not None and time.time() - row[2] > self.ttl_s:
            self._db.execute("DELETE FROM conversations WHERE id = ?", (response_id,))
            row = None
        if row is None or row[0] != owner:
            raise _not_stored(response_id, self.capacity, self.ttl_s)
        messages = tuple(MessageIn.model_validate(message) for message in json.loads(row[1]))
        age = time.time() - row[2]
        return StoredConversation(row[0], messages, time.monotonic() - age)

    def close(self) -> None:
        self._db.close()
