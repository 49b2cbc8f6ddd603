"""Gradio's per-session state, made cheap for API callers.

For every new session Gradio builds the config of every block in the app (71 here: the UI and the
hidden components the api_names hang off). Every call to Gradio's queued REST API
(`/gradio_api/call/<api_name>`, what Gradio's API page shows for curl) is a new session, so each
such call paid about 6 ms of CPU (the Gradio side spent 21 to 30 ms per answer at 64 streams) and
left about 120 KB in the session store, which keeps up to `state_session_capacity` (10,000)
sessions: about 1.5 GB of RSS before the oldest were dropped. A call reads only its own inputs'
and outputs' configs, and sets their values in them. Here each block's config is built the first
time something reads it, with the values set before; the UI's deep links, the one reader of them
all, build them all then.

Gradio offers no hook for this, so it subclasses two of its classes (`gradio.state_holder`); the
tests hold the subclass to Gradio's own results, so a Gradio release that changes them fails there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
from gradio.routes import App
from gradio.state_holder import SessionState, StateHolder
from starlette.routing import Mount


class _BlocksWithoutConfigs:
    """What `SessionState.__init__` reads of the Blocks, with no block to build a config for:
    its config comprehension keeps only the ids in `blocks`, and tests that before building one."""

    def __init__(self, blocks: gr.Blocks) -> None:
        self.default_config = blocks.default_config
        self.blocks: dict[int, Any] = {}


class LazySessionState(SessionState):
    """A `SessionState` whose block configs are built when first read, not all at creation."""

    def __init__(self, blocks: gr.Blocks) -> None:
        super().__init__(_BlocksWithoutConfigs(blocks))  # type: ignore[arg-type]
        self._app_block_ids = blocks.blocks.keys()
        self._all_built = False
        # Values set on blocks whose config is not built yet: Gradio sets every call's input and
        # output value in its session's configs, and a REST call's session is never read again.
        # Building those two configs (Gradio's `get_config` inspects the component's signature)
        # was the larger part of a call's session cost.
        self._values: dict[int, Any] = {}

    def _update_value_in_config(self, key: int, value: Any) -> None:
        if key in self.config_values or key not in self._app_block_ids:
            super()._update_value_in_config(key, value)
        else:
            self._values[key] = value

    def _update_config(self, key: int) -> None:
        self._values.pop(key, None)  # Gradio's own rebuild drops the value set before
        super()._update_config(key)

    def __setitem__(self, key: int, value: Any) -> None:
        self._values.pop(key, None)  # as `_update_config`
        super().__setitem__(key, value)

    def build_all_configs(self) -> None:
        """The configs Gradio's own `SessionState` holds, in its order: every app block's, built
        now unless this session already changed it, then those added since."""
        if self._all_built:
            return
        configs = {}
        for block_id, block in self.blocks_config.blocks.items():
            if block_id in self._app_block_ids:
                configs[block_id] = self.config_values.get(block_id) or self.blocks_config.config_for_block(
                    block_id, [], block
                )
        self.config_values = configs | self.config_values
        self._all_built = True
        for block_id, value in self._values.items():
            super()._update_value_in_config(block_id, value)
        self._values.clear()

    @property
    def components(self) -> Iterator[dict[str, Any]]:
        self.build_all_configs()
        yield from super().components


class LazyStateHolder(StateHolder):
    """Gradio's session store, creating `LazySessionState`s."""

    def __getitem__(self, session_id: str) -> SessionState:
        if session_id not in self.session_data:
            self.session_data[session_id] = LazySessionState(self.blocks)
        return super().__getitem__(session_id)


def gradio_app_of(mounted: Any) -> App:
    """The Gradio app `gr.mount_gradio_app` mounted in `mounted` (it returns only the outer app)."""
    apps = [route.app for route in mounted.routes if isinstance(route, Mount) and isinstance(route.app, App)]
    if len(apps) != 1:
        raise RuntimeError(f"expected one mounted Gradio app, found {len(apps)}")
    return apps[0]


def use_lazy_sessions(mounted: Any, blocks: gr.Blocks) -> None:
    """Give the Gradio app mounted in `mounted` (by `gr.mount_gradio_app`) a `LazyStateHolder`.
    Call it before the app serves: sessions already made would be dropped."""
    holder = LazyStateHolder()  # type: ignore[no-untyped-call]
    holder.set_blocks(blocks)  # also makes it blocks.state_holder
    gradio_app_of(mounted).state_holder = holder
