"""How the Gradio app is set up around Gradio itself: sessions that build block configs only when
read (held to Gradio's own results), queue slots that do not cap below the core's admission, no
import search for an absent matplotlib on every step, and no analytics summary after every event.
The app is built in process, in front of a TGI backend that is never called."""

from __future__ import annotations

import asyncio
import sys

import gradio as gr
import pytest
from gradio.queueing import Queue
from gradio.state_holder import SessionState
from h2ogpt_api.backends.tgi import TgiBackend
from h2ogpt_api.core import Core
from h2ogpt_api.gradio_api.app import MIN_JOB_SLOTS, create_app, job_slots
from h2ogpt_api.gradio_api.sessions import LazySessionState, LazyStateHolder, gradio_app_of
from h2ogpt_api.settings import Settings

MODEL = "fake/tgi-echo"


@pytest.fixture(scope="module")
def blocks() -> gr.Blocks:
    async def build() -> gr.Blocks:  # in a running loop, as h2ogpt-api builds it
        settings = Settings(inference_server="http://127.0.0.1:9", base_model=MODEL, langchain_modes=["LLM"])
        core = Core(settings, TgiBackend("http://127.0.0.1:9", model_name=MODEL, timeout=5), None)
        app = create_app(core, settings)
        blocks: gr.Blocks = gradio_app_of(app).get_blocks()
        return blocks

    return asyncio.run(build())


def test_a_new_session_builds_no_block_config(blocks: gr.Blocks) -> None:
    assert isinstance(blocks.state_holder, LazyStateHolder)
    session = blocks.state_holder["a-rest-call"]
    assert isinstance(session, LazySessionState)
    assert session.config_values == {}
    assert len(blocks.blocks) > 50  # what Gradio's own SessionState would have built at once


def test_read_configs_are_gradios_own(blocks: gr.Blocks) -> None:
    assert list(LazySessionState(blocks).components) == list(SessionState(blocks).components)


def test_a_value_a_session_changed_survives_building_the_rest(blocks: gr.Blocks) -> None:
    lazy, gradios = LazySessionState(blocks), SessionState(blocks)
    textbox = next(i for i, b in blocks.blocks.items() if isinstance(b, gr.Textbox))
    for session in (lazy, gradios):
        session._update_value_in_config(textbox, "changed in this session")
    assert lazy.config_values == {}  # what every api call does to its session builds no config
    assert list(lazy.components) == list(gradios.components)
    assert lazy.config_values[textbox]["props"]["value"] == "changed in this session"


def test_a_block_rebuilt_after_a_value_was_set_drops_it_as_gradio_does(blocks: gr.Blocks) -> None:
    lazy, gradios = LazySessionState(blocks), SessionState(blocks)
    textbox = next(i for i, b in blocks.blocks.items() if isinstance(b, gr.Textbox))
    for session in (lazy, gradios):
        session._update_value_in_config(textbox, "set, then rebuilt")
        session._update_config(textbox)
    assert list(lazy.components) == list(gradios.components)
    assert gradios.config_values[textbox]["props"].get("value") != "set, then rebuilt"


def test_gradios_queue_runs_what_the_core_may_admit_and_hold(blocks: gr.Blocks) -> None:
    # Gradio's default would be 40 for all events together, below what TGI admits.
    assert blocks._queue.max_thread_count == MIN_JOB_SLOTS + Settings().max_queue
    assert job_slots(None, 256) == MIN_JOB_SLOTS + 256  # no limit of ours: vLLM, OpenAI servers
    assert job_slots(4096, 256) == 4096 + 256  # a TGI that admits more than the minimum
    assert job_slots(5, 0) == MIN_JOB_SLOTS  # a small --max_concurrency: the core holds the rest


def test_an_absent_matplotlib_fails_to_import_at_once(blocks: gr.Blocks) -> None:
    # Gradio imports it around every step of every call; the app was built above.
    assert "matplotlib" in sys.modules
    if sys.modules["matplotlib"] is None:
        with pytest.raises(ImportError):
            import matplotlib  # noqa: F401, PLC0415


def test_the_queue_keeps_no_analytics_that_nothing_reads(blocks: gr.Blocks) -> None:
    queue = blocks._queue
    # The names are Gradio's own (a rename would leave these set on nothing and pass unseen).
    async def gradios_queue() -> Queue:  # in a running loop, as Gradio makes it
        return Queue(
            live_updates=False, concurrency_count=1, update_intervals=1, max_size=None, blocks=blocks
        )

    gradios = vars(asyncio.run(gradios_queue()))
    assert {"ANALYTICS_MAX_EVENTS", "ANAYLTICS_CACHE_FREQUENCY"} <= gradios.keys()
    assert queue.ANALYTICS_MAX_EVENTS == 1
    # What Gradio runs after every event: with records to summarize, it answers its cache unchanged
    # instead of building a DataFrame of them.
    record = {"time": 0.0, "status": "success", "process_time": 0.5, "function": "submit_nochat_api"}
    records = [{**record, "session_hash": str(n)} for n in range(100)]
    queue.events_recorded += len(records)
    assert queue.compute_analytics_summary(records) == {"functions": {}}
