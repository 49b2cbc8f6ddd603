"""`h2ogpt-api`: one process, one event loop, the OpenAI app and the Gradio app over one core
(or, with --workers N, N such processes sharing the OpenAI port: h2ogpt_api.workers)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import uvicorn

from h2ogpt_api import concurrency, workers
from h2ogpt_api.auth import ApiKeys, SharedLogins, anonymous_session_prefix, parse_users
from h2ogpt_api.backends import create_backend, replica_follower
from h2ogpt_api.core import Core
from h2ogpt_api.draining import Drain
from h2ogpt_api.retrieval.base import DocumentError, DocumentStore, Identity
from h2ogpt_api.settings import Settings, SettingsError, help_text, parse_settings_and_warnings

if TYPE_CHECKING:
    from h2ogpt_api.backends.routed import InFlight

log = logging.getLogger("h2ogpt_api")
# How many allocations (less deallocations) start a young-generation collection once serving:
# Python's 700 made the collector a steady share of each answer's CPU (settle_garbage_collector).
GC_GEN0_THRESHOLD = 50_000
USER_DATA = "UserData"
# Who --user_path files are added as (UserData is shared: the name only labels the ingestion).
USER_PATH_IDENTITY = "user_path"


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to us: two servers share one process and stop together."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
        yield


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _bound_port(server: uvicorn.Server, configured: int) -> int:
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    return configured


async def _open_documents(settings: Settings, stack: contextlib.AsyncExitStack) -> DocumentStore | None:
    if not settings.document_modes:
        return None
    try:
        from h2ogpt_api.retrieval.store import open_document_store  # noqa: PLC0415
    except ImportError as exc:
        raise SystemExit(
            f"h2ogpt-api: document collections {settings.document_modes} need the retrieval "
            f"module, which cannot be imported ({exc}); use --langchain_modes \"['LLM']\""
        ) from None
    try:
        store: DocumentStore = await stack.enter_async_context(
            open_document_store(
                weaviate_url=settings.weaviate_url,
                weaviate_api_key=settings.weaviate_api_key,
                save_dir=settings.save_dir,
                embedding_server=settings.embedding_server,
                embedding_model=settings.hf_embedding_model,
                collections=settings.document_modes,
                url_policy=settings.url_policy(),
                wait_seconds=settings.weaviate_wait_seconds,
            )
        )
    except DocumentError as exc:  # Weaviate unreachable or not ready: one line saying so, no traceback
        raise SystemExit(f"h2ogpt-api: {exc}") from None
    return store


async def _add_user_path(settings: Settings, documents: DocumentStore | None) -> None:
    """h2oGPT's --user_path: every file under the folder into the shared UserData collection.

    Done before serving, so the first question already sees them; files already stored are
    skipped by the store's de-duplication, so a restart adds only what is new. A file that
    cannot be read is reported by name and skipped, never fatal.
    """
    assert settings.user_path is not None
    folder = settings.user_path
    if not folder.is_dir():
        raise SystemExit(f"h2ogpt-api: --user_path {folder} is not a folder")
    if documents is None or USER_DATA not in settings.document_modes:
        raise SystemExit(f"h2ogpt-api: --user_path needs the {USER_DATA} collection in --langchain_modes")
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    added = 0
    for path in files:
        try:
            result = await documents.add_file(
                str(path),
                collection=USER_DATA,
                identity=Identity(username=USER_PATH_IDENTITY, authenticated=True),
                chunk_size=settings.chunk_size,
                source=str(path.relative_to(folder)),
            )
        except (DocumentError, OSError) as exc:
            log.warning("--user_path: skipped %s: %s", path, exc)
            continue
        added += result.chunks_added
    log.info("--user_path %s: %d files, %d new chunks in %s", folder, len(files), added, USER_DATA)


class DemandHooks(NamedTuple):
    """What `create_backend` calls to renew the demand Lease (h2ogpt_api.demand), all None without it."""

    on_hold: Callable[[], object] | None = None  # a request starts being held at zero replicas
    on_start: Callable[[int, int], None] | None = None  # a routed generation starts (the load wake)
    in_flight: InFlight | None = None  # the load wake's count: the pod's, over its --workers


def _demand_hooks(
    settings: Settings, worker: workers.WorkerRole | None, stack: contextlib.AsyncExitStack
) -> DemandHooks:
    """With --demand_lease: renew it as a request is held, and with --scale_up_in_flight as load passes
    the target (counted over all the pod's workers); `stack` closes the Lease's client."""
    if not (settings.demand_lease and settings.inference_server):
        return DemandHooks()
    from h2ogpt_api.demand import DemandSignal, ScaleUpWake  # noqa: PLC0415

    try:
        demand = DemandSignal(settings.demand_lease)
    except ValueError as exc:
        raise SystemExit(f"h2ogpt-api: {exc}") from None
    stack.push_async_callback(demand.aclose)
    if not settings.scale_up_in_flight:
        return DemandHooks(on_hold=demand.signal)
    wake = ScaleUpWake(
        settings.scale_up_in_flight, settings.scale_up_max_replicas, lambda: demand.signal("load")
    )
    # The pod's generations, not this worker's share, against the target.
    in_flight = workers.SharedInFlightCount(worker) if worker is not None else None
    return DemandHooks(demand.signal, wake.started, in_flight)


async def serve(settings: Settings, worker: workers.WorkerRole | None = None) -> None:  # noqa: PLR0912, PLR0915
    """Build the core and the apps, serve until SIGINT/SIGTERM, then shut everything down.
    `worker`: this process is one of --workers N (the supervisor checked the ports)."""
    if not settings.openai_server and not settings.gradio:
        raise SystemExit("h2ogpt-api: nothing to serve: both --openai_server and --gradio are False")
    if worker is None:
        _check_ports_free(settings)
    try:  # fail now, with one clear line, on unreadable users or keys
        parse_users(settings.auth)
        ApiKeys(settings.h2ogpt_api_keys)
    except ValueError as exc:
        raise SystemExit(f"h2ogpt-api: {exc}") from None
    async with contextlib.AsyncExitStack() as stack:
        backend = create_backend(settings, *_demand_hooks(settings, worker, stack))
        stack.push_async_callback(backend.aclose)
        if settings.inference_endpointslices:
            from h2ogpt_api.endpointslices import EndpointSliceWatcher  # noqa: PLC0415

            try:
                watcher = EndpointSliceWatcher(
                    settings.inference_endpointslices, settings.inference_server, replica_follower(backend)
                )
            except ValueError as exc:
                raise SystemExit(f"h2ogpt-api: {exc}") from None
            watcher.start()
            stack.push_async_callback(watcher.aclose)
        documents = await _open_documents(settings, stack)
        if settings.user_path is not None:
            await _add_user_path(settings, documents)
        first = worker is None or worker.first
        if documents is not None and settings.gradio and "MyData" in settings.document_modes and first:
            from h2ogpt_api.retrieval.store import sweep_anonymous_mydata  # noqa: PLC0415

            sweeper = asyncio.create_task(
                sweep_anonymous_mydata(
                    documents,  # type: ignore[arg-type]
                    anonymous_session_prefix(settings),
                    settings.anonymous_mydata_ttl,
                ),
                name="anonymous-mydata-sweeper",
            )
            stack.callback(sweeper.cancel)
        logins = getattr(documents, "logins", None)
        if logins is None and worker is not None:
            logins = SharedLogins(worker.state_file)  # a registration counts in every worker
        # The store's embedder also serves /v1/embeddings: one model in memory, not two.
        core = Core(
            settings,
            backend,
            documents,
            embedder=getattr(documents, "embedder", None),
            logins=logins,
        )
        asking = await concurrency.settle(
            core.admission, backend, settings.max_concurrency, worker.count if worker else 1
        )
        if asking is not None:
            stack.callback(asking.cancel)

        apps: list[tuple[str, str, Any, int]] = []
        # A worker's /health says "starting" until every worker serves (workers.ALL_STARTED_FILE).
        started = worker.all_started if worker is not None else None
        on_stop: list[Callable[[], None]] = []  # what else ends when the servers stop listening
        if settings.openai_server:
            from h2ogpt_api.openai_api.app import create_app as create_openai_app  # noqa: PLC0415
            from h2ogpt_api.openai_api.conversations import SharedConversations  # noqa: PLC0415

            conversations = SharedConversations(worker.state_file) if worker is not None else None
            openai_app = create_openai_app(core, settings, conversations, started=started)
            apps.append(("OpenAI API", "/v1", openai_app, settings.openai_port))
        if settings.gradio:
            try:
                from h2ogpt_api.gradio_api import app as gradio_app_module  # noqa: PLC0415
            except ImportError as exc:
                raise SystemExit(
                    f"h2ogpt-api: the Gradio app cannot be loaded ({exc}); "
                    "pass --gradio False to serve only the OpenAI API"
                ) from None

            gradio_app = gradio_app_module.create_app(core, settings, started=started)
            on_stop.append(gradio_app_module.heartbeat_stopper(gradio_app))
            apps.append(("Gradio UI", "/", gradio_app, settings.gradio_port))

        drain = Drain(settings.drain_seconds)
        servers = [
            _Server(
                uvicorn.Config(
                    drain.wrap(app),
                    host=settings.server_name,
                    port=port,
                    log_level=settings.log_level,
                    access_log=False,
                    lifespan="on",
                    # None: after the drain, answers still streaming finish (an LLM's can run for
                    # minutes); the pod's grace period, or a second signal, bounds that.
                    timeout_graceful_shutdown=None,
                )
            )
            for _, _, app, port in apps
        ]
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(
                signum,
                drain.on_stop_signal,
                functools.partial(_stop_all, servers, on_stop),
                functools.partial(_stop_all, servers, on_stop, force=True),
            )
        # A worker listens on the OpenAI port beside the other workers (SO_REUSEPORT).
        sockets = [
            [workers.listening_socket(settings.server_name, port)]
            if worker is not None and path == "/v1"
            else None
            for _, path, _, port in apps
        ]
        serving = asyncio.gather(
            *(server.serve(sockets=own) for server, own in zip(servers, sockets, strict=True))
        )
        while not all(server.started for server in servers):
            if serving.done():
                await serving  # a server failed to start: raise its error
                raise SystemExit("h2ogpt-api: a server stopped during start-up")
            await asyncio.sleep(0.05)
        settle_garbage_collector()
        host = _display_host(settings.server_name)
        if first:
            for (label, path, _, port), server in zip(apps, servers, strict=True):
                print(f"{label}: http://{host}:{_bound_port(server, port)}{path}", flush=True)
        if worker is None:
            print(f"h2ogpt-api ready (backend {backend.kind}, model {settings.base_model})", flush=True)
        else:
            print(f"h2ogpt-api worker {worker.index + 1} of {worker.count} serving", flush=True)
            worker.report_ready()
        await serving


def settle_garbage_collector() -> None:
    """Once the servers serve: what start-up built (imports, the apps, Gradio's blocks: most of the
    heap) is frozen out of the collector's sight, so a full collection walks only what serving
    made, and the youngest generation is collected every GC_GEN0_THRESHOLD allocations instead
    of Python's 700. Reference counting still frees at once everything that is not in a cycle;
    this only changes how often cycles are looked for.

    Measured side by side (docs/benchmarks.md, "OpenAI proxy overhead"): at 256 streams about 16%
    more tokens/s on the Gradio side and 5% on the OpenAI side, 9 to 16% less CPU per answer at 64
    and 256 streams, the Gradio side's 64-stream rounds no longer slowed by full collections after
    an overload, and the same memory.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD)


def _check_ports_free(settings: Settings) -> None:
    """Fail at once, in one line, when a port is taken: before the model and Weaviate start."""
    wanted = [("--openai_port", settings.openai_port, settings.openai_server),
              ("--gradio_port", settings.gradio_port, settings.gradio)]
    for flag, port, enabled in wanted:
        if not enabled or port == 0:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As uvicorn binds: SO_REUSEADDR, so a port in TIME_WAIT is not reported as taken.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((settings.server_name, port))
            except OSError as exc:
                raise SystemExit(
                    f"h2ogpt-api: cannot listen on {settings.server_name}:{port} ({exc.strerror}): "
                    f"stop what uses it, or pass another {flag}"
                ) from None


def _stop_all(
    servers: Sequence[uvicorn.Server], on_stop: Sequence[Callable[[], None]], *, force: bool = False
) -> None:
    """Stop listening and end once the answers in flight are sent; `force`: end without waiting."""
    for server in servers:
        server.should_exit = True
        server.force_exit = server.force_exit or force
    for stop in on_stop:
        stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in args):
        print(help_text())
        return
    try:
        settings, warnings = parse_settings_and_warnings(args, os.environ)
    except SettingsError as exc:
        print(f"h2ogpt-api: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for warning in warnings:  # once each, at start-up
        log.warning("%s", warning)
    worker = workers.WorkerRole.from_environ(os.environ)
    if settings.workers > 1 and worker is None:
        log.info("settings: %s", settings.redacted())
        raise SystemExit(workers.supervise(settings, args))
    if worker is None or worker.first:
        log.info("settings: %s", settings.redacted())
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        asyncio.run(serve(settings, worker))
    else:
        uvloop.run(serve(settings, worker))
