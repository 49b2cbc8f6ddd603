"""The OpenAI app's request metrics, in process: each request is counted under its route's template,
and what the middleware remembers to find a template faster stays as small as the app's routes, whatever
paths clients send (scanners, model names in the path). The app runs in front of a TGI address that is
never called."""

from __future__ import annotations

import asyncio

import httpx
from h2ogpt_api.backends.tgi import TgiBackend
from h2ogpt_api.core import Core
from h2ogpt_api.openai_api.app import MetricsMiddleware, create_app
from h2ogpt_api.settings import Settings
from prometheus_client import REGISTRY

MODEL = "fake/tgi-echo"


def requests_counted(route: str, status: int) -> float:
    labels = {"route": route, "status": str(status)}
    value = REGISTRY.get_sample_value("h2ogpt_api_requests_total", labels)
    return value or 0.0


def metrics_middleware(app: object) -> MetricsMiddleware:
    """The MetricsMiddleware in the app's built middleware stack."""
    layer = app
    while not isinstance(layer, MetricsMiddleware):
        layer = layer.app  # type: ignore[attr-defined]
    return layer


def test_requests_count_under_their_template_and_the_lookup_stays_bounded() -> None:
    async def exercise() -> MetricsMiddleware:
        settings = Settings(inference_server="http://127.0.0.1:9", base_model=MODEL, langchain_modes=["LLM"])
        core = Core(settings, TgiBackend("http://127.0.0.1:9", model_name=MODEL, timeout=5), None)
        app = create_app(core, settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(3):
                assert (await client.get("/v1/models")).status_code == 200
                assert (await client.get("/health")).status_code == 200
            for n in range(40):
                assert (await client.get(f"/v1/models/{MODEL}-{n}")).status_code in (200, 404)
                assert (await client.get(f"/scanner/probe-{n}")).status_code == 404
            assert (await client.delete("/v1/models")).status_code == 405
        return metrics_middleware(app.middleware_stack)

    before = {
        ("/v1/models", 200): requests_counted("/v1/models", 200),
        ("/health", 200): requests_counted("/health", 200),
        ("unmatched", 404): requests_counted("unmatched", 404),
        ("unmatched", 405): requests_counted("unmatched", 405),
    }
    model_routes_before = sum(
        requests_counted("/v1/models/{model:path}", status) for status in (200, 404)
    )
    middleware = asyncio.run(exercise())

    assert requests_counted("/v1/models", 200) - before[("/v1/models", 200)] == 3
    assert requests_counted("/health", 200) - before[("/health", 200)] == 3
    assert requests_counted("unmatched", 404) - before[("unmatched", 404)] == 40
    # A method the route does not serve is no request to that route.
    assert requests_counted("unmatched", 405) - before[("unmatched", 405)] == 1
    model_routes = sum(requests_counted("/v1/models/{model:path}", status) for status in (200, 404))
    assert model_routes - model_routes_before == 40
    # Remembered: the two routes without parameters, once each; not the 80 other paths.
    assert set(middleware._fixed_routes) == {("GET", "/v1/models"), ("GET", "/health")}
