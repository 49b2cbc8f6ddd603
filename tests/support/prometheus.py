"""A real Prometheus (v3, `make tools`) for the tests, configured from the cluster's own objects.

The Prometheus Operator is NOT run: it would need a Prometheus container image on the node and a
build of its own, and what the tests check is what it is given (the chart's and the operator's
ServiceMonitor and PrometheusRule objects, validated by the apiserver with the Operator's real CRDs)
and what Prometheus does with them. Instead this module does the Operator's translation, small and
on purpose partial:

- each ServiceMonitor endpoint becomes one scrape job `serviceMonitor/<namespace>/<name>/<index>`
  with Kubernetes service discovery (role `endpointslice`, through `kubeconfig_file`), keeping the
  Service selector (`matchLabels`, `matchExpressions`), `namespaceSelector`, the endpoint's `port`,
  `path`, `scheme`, `interval`, `scrapeTimeout`, `honorLabels`, `params`, `relabelings` and
  `metricRelabelings`, and the target labels the Operator sets (`namespace`, `service`, `pod`,
  `container`, `endpoint`, `job` = the Service's name); any other endpoint field (TLS, auth) is an
  error naming it, never silently dropped;
- each PrometheusRule's `spec.groups` becomes one rule file.

On the control plane the pods are kwok fakes (no container runs): a test names the process that
stands in for a Service's port (`stand_ins`), the discovered target's address is rewritten to it,
and targets with no stand-in are dropped. On the real node the pods' own addresses are scraped.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.localcluster import BIN, find_binary
from tests.support.cluster import Cluster, wait_for

# The folder `hack/tools.sh prometheus-operator-crds` links: the Operator's CRDs from its Go module.
OPERATOR_CRDS = BIN / "prometheus-operator-crds"
# Prometheus's web UI, built only for the dashboard picture (`hack/tools.sh prometheus-ui`): Prometheus
# serves it when started in this folder. The API the tests use needs no UI.
UI_DIR = BIN / "prometheus-ui"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# The kinds a chart or an operator creates for monitoring; the Operator's own kinds (Prometheus,
# Alertmanager, ...) have no use here without it.
OPERATOR_CRD_KINDS = ("servicemonitors", "podmonitors", "prometheusrules")
START_TIMEOUT_S = 60.0

# Endpoint fields the translation understands; anything else in a ServiceMonitor is refused.
_ENDPOINT_FIELDS = {
    "port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "honorTimestamps",
    "params", "relabelings", "metricRelabelings",
}  # fmt: skip
_RELABEL_KEYS = {
    "sourceLabels": "source_labels", "separator": "separator", "targetLabel": "target_label",
    "regex": "regex", "modulus": "modulus", "replacement": "replacement", "action": "action",
}  # fmt: skip


class TranslationError(ValueError):
    """A ServiceMonitor uses something the test translation does not do (named in the message)."""


def install_operator_crds(cluster: Cluster) -> None:
    """The Prometheus Operator's ServiceMonitor, PodMonitor and PrometheusRule CRDs, Established."""
    if not OPERATOR_CRDS.is_dir():
        pytest.fail(f"{OPERATOR_CRDS} is missing: run 'make tools' (hack/tools.sh prometheus-operator-crds)")
    for kind in OPERATOR_CRD_KINDS:
        path = OPERATOR_CRDS / f"monitoring.coreos.com_{kind}.yaml"
        # Server-side: the CRDs are too large for client-side apply's last-applied annotation.
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    names = [f"crd/{kind}.monitoring.coreos.com" for kind in OPERATOR_CRD_KINDS]
    cluster.kubectl("wait", "--for=condition=Established", *names, "--timeout=60s")


@pytest.fixture(scope="session")
def prometheus_operator_crds(cluster: Cluster) -> None:
    """The Operator's CRDs in the session's cluster, for every test that applies monitoring objects."""
    install_operator_crds(cluster)


# ---- the translation (pure) ---------------------------------------------------------------------------


def _label_name(key: str) -> str:
    """A Kubernetes label key as Prometheus's service discovery writes it in a meta label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def _relabel(rule: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(rule) - set(_RELABEL_KEYS)
    if unknown:
        raise TranslationError(f"relabeling fields not translated: {sorted(unknown)}")
    converted = {_RELABEL_KEYS[key]: value for key, value in rule.items()}
    if "action" in converted:  # the CRD allows `Replace` as well as `replace`
        converted["action"] = str(converted["action"]).lower()
    return converted


def _selector_relabels(selector: Mapping[str, Any]) -> list[dict[str, Any]]:
    """keep/drop rules that select the Services a label selector selects."""
    rules: list[dict[str, Any]] = []

    def meta(key: str) -> list[str]:
        name = _label_name(key)
        return [f"__meta_kubernetes_service_label_{name}", f"__meta_kubernetes_service_labelpresent_{name}"]

    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        rules.append({"action": "keep", "source_labels": meta(key), "regex": f"({re.escape(value)});true"})
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = "|".join(re.escape(v) for v in expression.get("values") or [])
        if operator == "In":
            rules.append({"action": "keep", "source_labels": meta(key), "regex": f"({values});true"})
        elif operator == "NotIn":
            rules.append({"action": "drop", "source_labels": meta(key), "regex": f"({values});true"})
        elif operator == "Exists":
            rules.append({"action": "keep", "source_labels": meta(key)[1:], "regex": "true"})
        elif operator == "DoesNotExist":
            rules.append({"action": "drop", "source_labels": meta(key)[1:], "regex": "true"})
        else:
            raise TranslationError(f"matchExpressions operator {operator!r}")
    return rules


def scrape_configs(
    monitor: Mapping[str, Any], kubeconfig: Path, stand_ins: Mapping[tuple[str, str, str], str] | None = None
) -> list[dict[str, Any]]:
    """The scrape jobs Prometheus gets for one ServiceMonitor (as read back from the apiserver).

    `stand_ins`: {(namespace, service, port name): "host:port"}; when given, each target is
    scraped at its stand-in's address instead of its pod's, and targets without one are dropped.
    """
    metadata, spec = monitor["metadata"], monitor["spec"]
    namespace_selector = spec.get("namespaceSelector") or {}
    if namespace_selector.get("any"):
        namespaces: list[str] = []
    else:
        namespaces = list(namespace_selector.get("matchNames") or [metadata["namespace"]])
    if spec.get("jobLabel") or spec.get("targetLabels") or spec.get("podTargetLabels"):
        raise TranslationError("jobLabel/targetLabels/podTargetLabels are not translated")
    jobs = []
    for index, endpoint in enumerate(spec["endpoints"]):
        unknown = set(endpoint) - _ENDPOINT_FIELDS
        if unknown:
            raise TranslationError(
                f"ServiceMonitor {metadata['namespace']}/{metadata['name']} endpoint {index}: "
                f"fields not translated: {sorted(unknown)}"
            )
        if "port" not in endpoint:
            raise TranslationError("only endpoints that name a Service port are translated")
        discovery: dict[str, Any] = {"role": "endpointslice", "kubeconfig_file": str(kubeconfig)}
        if namespaces:
            discovery["namespaces"] = {"names": namespaces}
        relabels = _selector_relabels(spec.get("selector") or {})
        relabels.append({
            "action": "keep", "source_labels": ["__meta_kubernetes_endpointslice_port_name"],
            "regex": re.escape(endpoint["port"]),
        })  # fmt: skip
        # The target labels the Prometheus Operator gives every ServiceMonitor target.
        for target, source in (
            ("namespace", "__meta_kubernetes_namespace"),
            ("service", "__meta_kubernetes_service_name"),
            ("pod", "__meta_kubernetes_pod_name"),
            ("container", "__meta_kubernetes_pod_container_name"),
            ("job", "__meta_kubernetes_service_name"),
        ):
            relabels.append({"source_labels": [source], "target_label": target})
        relabels.append({"target_label": "endpoint", "replacement": endpoint["port"]})
        relabels += [_relabel(rule) for rule in endpoint.get("relabelings") or []]
        if stand_ins is not None:
            relabels += _stand_in_relabels(stand_ins)
        job: dict[str, Any] = {
            "job_name": f"serviceMonitor/{metadata['namespace']}/{metadata['name']}/{index}",
            "kubernetes_sd_configs": [discovery],
            "metrics_path": endpoint.get("path", "/metrics"),
            "scheme": endpoint.get("scheme", "http"),
            "honor_labels": bool(endpoint.get("honorLabels", False)),
            "relabel_configs": relabels,
        }
        for source, target in (
            ("interval", "scrape_interval"),
            ("scrapeTimeout", "scrape_timeout"),
            ("honorTimestamps", "honor_timestamps"),
            ("params", "params"),
        ):
            if source in endpoint:
                job[target] = endpoint[source]
        if endpoint.get("metricRelabelings"):
            job["metric_relabel_configs"] = [_relabel(rule) for rule in endpoint["metricRelabelings"]]
        jobs.append(job)
    return jobs


def _stand_in_relabels(stand_ins: Mapping[tuple[str, str, str], str]) -> list[dict[str, Any]]:
    sources = [
        "__meta_kubernetes_namespace", "__meta_kubernetes_service_name",
        "__meta_kubernetes_endpointslice_port_name",
    ]  # fmt: skip
    rules: list[dict[str, Any]] = []
    for (namespace, service, port), address in sorted(stand_ins.items()):
        key = f"{re.escape(namespace)};{re.escape(service)};{re.escape(port)}"
        rules.append(
            {"source_labels": sources, "regex": key, "target_label": "__address__", "replacement": address}
        )
        rules.append(
            {"source_labels": sources, "regex": key, "target_label": "__tmp_stand_in", "replacement": "yes"}
        )
    rules.append({"action": "keep", "source_labels": ["__tmp_stand_in"], "regex": "yes"})
    return rules


def rule_file(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A PrometheusRule's groups as a Prometheus rule file."""
    return {"groups": list(rule["spec"]["groups"])}


# ---- the process ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Prometheus:
    """One `prometheus` process on loopback, its config rewritten by `configure`."""

    directory: Path
    cluster: Cluster
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    # Only rule evaluation needs to be fast here: `for:` durations in the tests are seconds.
    evaluation_interval: str = "1s"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "prometheus.yml"

    @property
    def rules_dir(self) -> Path:
        return self.directory / "rules"

    def log(self) -> str:
        path = self.directory / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, cwd: Path | None = None) -> None:
        """`cwd`: where a built UI lies under web/ui/static (Prometheus looks there when its UI is
        not compiled in); none is needed for the API."""
        self.rules_dir.mkdir(parents=True, exist_ok=True)
        self._write({"scrape_configs": []}, {})
        argv = [
            find_binary("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",  # POST /-/reload after each configure
            "--log.level=warn",
        ]
        with (self.directory / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd or self.directory
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.process.returncode}):\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {START_TIMEOUT_S}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def configure(
        self,
        namespaces: Sequence[str],
        stand_ins: Mapping[tuple[str, str, str], str] | None = None,
        static_jobs: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """Read the ServiceMonitors and PrometheusRules of `namespaces` back from the apiserver and
        reload Prometheus with them (as the Operator would for a Prometheus selecting those
        namespaces). Returns the config written."""
        jobs: list[dict[str, Any]] = []
        rules: dict[str, dict[str, Any]] = {}
        for namespace in namespaces:
            for monitor in self._items("servicemonitors", namespace):
                jobs += scrape_configs(monitor, self.cluster.kubeconfig, stand_ins)
            for rule in self._items("prometheusrules", namespace):
                rules[f"{namespace}-{rule['metadata']['name']}.yaml"] = rule_file(rule)
        config = {"scrape_configs": [*jobs, *static_jobs]}
        written = self._write(config, rules)
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200, response.read()
        return written

    def _items(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        listed = json.loads(self.cluster.kubectl("get", kind, "-n", namespace, "-o", "json").stdout)
        return list(listed["items"])

    def _write(self, config: dict[str, Any], rules: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        shutil.rmtree(self.rules_dir, ignore_errors=True)
        self.rules_dir.mkdir(parents=True)
        for name, groups in rules.items():
            (self.rules_dir / name).write_text(yaml.safe_dump(groups, sort_keys=False))
        full = {
            "global": {"evaluation_interval": self.evaluation_interval, "scrape_interval": "5s"},
            "rule_files": [str(self.rules_dir / "*.yaml")],
            **config,
        }
        self.config_path.write_text(yaml.safe_dump(full, sort_keys=False))
        return full

    # ---- the HTTP API ----

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a success, else an AssertionError with Prometheus's error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
            raise AssertionError(f"{path} {params}: {error.code} {body.get('error')}") from error
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def parse(self, expr: str) -> dict[str, Any]:
        """The expression's syntax tree (/api/v1/parse_query); a syntax error fails the caller."""
        tree: dict[str, Any] = self.api("parse_query", query=expr)
        return tree

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def wait_targets_up(self, jobs: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until at least `jobs` distinct scrape pools have targets, all of them up."""

        def all_up() -> list[dict[str, Any]] | None:
            targets = self.targets()
            pools = {t["scrapePool"] for t in targets}
            if len(pools) >= jobs and targets and all(t["health"] == "up" for t in targets):
                return targets
            return None

        try:
            return wait_for(all_up, timeout, f"{jobs} scrape pools with every target up", interval=1)
        except AssertionError as error:
            summary = [(t["scrapePool"], t["scrapeUrl"], t["health"], t["lastError"]) for t in self.targets()]
            raise AssertionError(f"{error}\ntargets: {summary}") from None


def selectors(tree: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every series selector in a parse_query syntax tree (`x{...}` and `x{...}[5m]` alike)."""
    if tree.get("type") in ("vectorSelector", "matrixSelector"):
        yield tree
    for value in tree.values():
        if isinstance(value, Mapping):
            yield from selectors(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Mapping):
                    yield from selectors(item)


def selector_text(selector: Mapping[str, Any]) -> str:
    """A vector selector back as PromQL (all its matchers, the metric name among them)."""
    matchers = [f"{m['name']}{m['type']}{json.dumps(m['value'])}" for m in selector.get("matchers") or []]
    return "{" + ", ".join(matchers) + "}"


def has_data(result: Sequence[Mapping[str, Any]]) -> bool:
    """At least one series with a number a panel can draw (NaN, e.g. a quantile of no data, is none)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


@pytest.fixture(scope="session")
def prometheus(
    cluster: Cluster, prometheus_operator_crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """A Prometheus for the session, started empty; each test `configure`s it for its namespaces."""
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), cluster)
    server.start(cwd=UI_DIR.resolve() if UI_DIR.is_dir() else None)
    try:
        yield server
    finally:
        server.stop()


def graph_page_url(prometheus_url: str, exprs: Sequence[str], minutes: int) -> str:
    """Prometheus's graph page with one panel per expression over the last `minutes`."""
    params: dict[str, str] = {}
    for index, expr in enumerate(exprs):
        params |= {f"g{index}.expr": expr, f"g{index}.tab": "graph", f"g{index}.range_input": f"{minutes}m",
                   f"g{index}.show_tree": "0", f"g{index}.display_mode": "lines"}
    return f"{prometheus_url}/query?{urllib.parse.urlencode(params)}"


def screenshot_graph_page(prometheus: Prometheus, exprs: Sequence[str], minutes: int, out: Path) -> None:
    """A full-page PNG of Prometheus's own graph page (headless Chromium) with these expressions."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 (only this path needs a browser)

    if not (UI_DIR / "static" / "mantine-ui" / "index.html").exists():
        raise AssertionError(f"Prometheus's UI is not built in {UI_DIR}: run 'hack/tools.sh prometheus-ui'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(graph_page_url(prometheus.url, exprs, minutes))
            # uPlot draws each panel's graph on a canvas once its range query answered.
            drawn = f"document.querySelectorAll('.uplot canvas').length >= {len(exprs)}"
            page.wait_for_function(drawn, timeout=60_000)
            page.wait_for_load_state("networkidle")
            # The whole page in one viewport, then time for uPlot to redraw at that size: a full-page
            # screenshot resizes the page itself and can catch the graphs mid-redraw (empty).
            height = int(page.evaluate("document.documentElement.scrollHeight"))
            page.set_viewport_size({"width": 1280, "height": height})
            page.wait_for_function(
                "[...document.querySelectorAll('.uplot')].every(u => u.getBoundingClientRect().width > 900)",
                timeout=30_000,
            )
            page.wait_for_timeout(2_000)
            shot = page.screenshot()
        finally:
            browser.close()
    assert shot.startswith(b"\x89PNG")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(shot)
