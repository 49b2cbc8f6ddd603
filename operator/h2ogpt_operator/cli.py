"""`h2ogpt-operator`: run the operator.

No flags: watch all namespaces. `--namespace NS` (repeatable): only those. At start it server-side
applies its own CRD (`--no-apply-crd`: not). Reads KUBECONFIG (or
~/.kube/config), else the in-cluster service account. Serves Prometheus metrics on :8080/metrics
and kopf's liveness on :8081/healthz; acts only while holding the leader Lease.

Its own loops (leader election, the work queue, the autoscaler) run for as long as it does: one
that ends with an error stops the process with the traceback and exit status 1, so Kubernetes
restarts it, rather than living on without reconciling. SIGUSR1 writes every thread's stack to
stderr (what a stuck process is doing) and keeps running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import kopf
from prometheus_client import start_http_server

from h2ogpt_operator import metrics
from h2ogpt_operator.autoscaler import Autoscaler
from h2ogpt_operator.config import PROJECT_VERSION, OperatorConfig
from h2ogpt_operator.crd import apply_own_crd
from h2ogpt_operator.events import EventRecorder
from h2ogpt_operator.handlers import HandlerContext, SecretReaders, build_registry
from h2ogpt_operator.kube import Kube, load_api_client
from h2ogpt_operator.leader import LeaderElector
from h2ogpt_operator.reconcile import Reconciler
from h2ogpt_operator.watchcache import WatchCache
from h2ogpt_operator.workqueue import Key, WorkQueue

log = logging.getLogger("h2ogpt_operator")
# At a stop, Events still queued get this long to be sent (the pod's grace period is 30 s; the Lease
# is released first so that a new leader need not wait for them).
EVENTS_FLUSH_SECONDS = 5.0
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# How often autoscaled stacks have their API pods' metrics read, unless --autoscale-interval-seconds.
AUTOSCALE_INTERVAL_S = 15.0

def _own_namespace() -> str:
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return "default"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="h2ogpt-operator", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)")
    parser.add_argument(
        "--liveness-port", type=int, default=8081, help="kopf liveness /healthz port (0: off)"
    )
    parser.add_argument("--workers", type=int, default=4, help="stacks reconciled concurrently")
    parser.add_argument("--resync-seconds", type=float, default=60.0, help="re-check every stack this often")
    parser.add_argument(
        "--retry-seconds",
        type=float,
        default=1.0,
        help="first re-check of a stack whose write was refused; doubles, up to --retry-max-seconds",
    )
    parser.add_argument(
        "--retry-max-seconds", type=float, default=300.0, help="longest delay between re-checks"
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=None,
        help="namespace of the Lease (default: POD_NAMESPACE or the service account's)",
    )
    parser.add_argument("--leader-election-name", default="h2ogpt-operator", help="name of the Lease")
    parser.add_argument("--lease-seconds", type=int, default=15, help="Lease duration")
    parser.add_argument(
        "--identity", default=None, help="this replica's name in the Lease (default: host + random)"
    )
    parser.add_argument(
        "--no-apply-crd",
        dest="apply_crd",
        action="store_false",
        help="do not server-side apply this release's H2oGPTDeployment CRD at start (you manage it)",
    )
    parser.add_argument(
        "--autoscale-interval-seconds",
        type=float,
        default=AUTOSCALE_INTERVAL_S,
        help="how often stacks with spec.inference.autoscaling have their API pods' metrics read (a stack "
        "is also read as soon as its API pods renew its demand Lease: a request held at zero replicas, "
        "or more than targetInFlight per ready replica in flight)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if args.workers < 1 or args.resync_seconds <= 0 or args.retry_seconds <= 0 or args.lease_seconds < 3:
        parser.error("--workers must be >= 1, --resync/--retry-seconds > 0, --lease-seconds >= 3")
    if args.autoscale_interval_seconds <= 0:
        parser.error("--autoscale-interval-seconds must be > 0")
    return args


def stop_when_one_ends(tasks: Sequence[asyncio.Task[None]], stop: asyncio.Event) -> list[str]:
    """Set `stop` when one of `tasks` ends before it is set (with its traceback logged); the list
    returned fills with the names of those that did."""
    failed: list[str] = []

    def ended(task: asyncio.Task[None]) -> None:
        if task.cancelled() or stop.is_set():
            return  # shutting down, or the elector standing down after a lost Lease
        error = task.exception()
        name, why = task.get_name(), error or "returned"
        log.critical("%s ended (%s); stopping the operator", name, why, exc_info=error)
        failed.append(name)
        stop.set()

    for task in tasks:
        task.add_done_callback(ended)
    return failed


async def _send_the_last_events(events: EventRecorder) -> None:
    if not await asyncio.to_thread(events.close, EVENTS_FLUSH_SECONDS):
        log.warning("stopping with Events still unsent after %.0f s", EVENTS_FLUSH_SECONDS)


async def run(args: argparse.Namespace) -> int:
    config = OperatorConfig.from_env(os.environ)
    kube = Kube(load_api_client(), count_write=metrics.count_write, count_read=metrics.count_read)
    if args.apply_crd:
        # Before watching: stacks are read with the schema (defaults, pruning) of this release.
        await asyncio.to_thread(apply_own_crd, kube, PROJECT_VERSION)
    cache = WatchCache()
    events = EventRecorder(kube, on_dropped=metrics.EVENTS_DROPPED.inc).start()
    reconciler = Reconciler(kube, config, cache, events=events)
    secret_readers = SecretReaders()
    readiness: dict[Key, bool] = {}

    async def reconcile(key: Key) -> bool:
        started = time.monotonic()
        try:
            # Copied on the event loop, where kopf writes its indexes; the thread only reads the copy.
            view = cache.view(*key)
            outcome = await asyncio.to_thread(reconciler.reconcile, view, *key)
        except Exception:
            metrics.RECONCILES.labels(result="error").inc()
            raise
        finally:
            metrics.RECONCILE_DURATION.observe(time.monotonic() - started)
        metrics.RECONCILES.labels(result="error" if outcome.errors else "success").inc()
        if not outcome.exists:
            queue.forget(key)
            cache.forget(key)
            secret_readers.read(key, ())
            readiness.pop(key, None)
            metrics.publish_stack_ready(*key, None)
        else:
            readiness[key] = outcome.ready
            secret_readers.read(key, [*outcome.secrets_read, *outcome.missing_secrets])
            metrics.publish_stack_ready(*key, outcome.ready)
        metrics.publish_readiness(readiness)
        if outcome.writes:
            log.info(
                "reconciled %s/%s: %d writes (%s)",
                *key,
                outcome.writes,
                ", ".join(outcome.applied) or "status",
            )
        # Settled unless a write was refused. A stack that is only waiting on the cluster (pods
        # starting, a Secret not there yet) needs no timer: every object its status is computed from
        # is watched, and the event that changes it runs the stack again.
        return not outcome.exists or not outcome.errors

    queue = WorkQueue(
        reconcile,
        workers=args.workers,
        resync_seconds=args.resync_seconds,
        retry_seconds=args.retry_seconds,
        retry_max_seconds=args.retry_max_seconds,
    )
    identity = args.identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    elector = LeaderElector(
        kube,
        args.leader_election_namespace or _own_namespace(),
        args.leader_election_name,
        identity,
        lease_seconds=args.lease_seconds,
        renew_seconds=args.lease_seconds / 3,
    )
    autoscaler = Autoscaler(kube, cache)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(elector.run(on_lost=stop.set), name="leader-election"),
        asyncio.create_task(queue.run(elector.is_leader), name="work-queue"),
        asyncio.create_task(
            autoscaler.run(args.autoscale_interval_seconds, elector.is_leader, queue.add), name="autoscaler"
        ),
    ]
    failed = stop_when_one_ends(tasks, stop)
    try:
        await kopf.operator(
            registry=build_registry(
                HandlerContext(
                    queue=queue, cache=cache, secret_readers=secret_readers, wake_autoscaler=autoscaler.wake
                )
            ),
            indexers=cache.indexers,
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None,
            stop_flag=stop,
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(elector.release)
        await _send_the_last_events(events)
    return 1 if elector.lost or failed else 0


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # kopf logs each handled watch event at info ("Handler ... succeeded"): only its warnings,
    # unless debugging.
    logging.getLogger("kopf").setLevel(logging.DEBUG if args.log_level == "debug" else logging.WARNING)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
