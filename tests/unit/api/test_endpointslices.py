"""Replica URLs from EndpointSlices (endpointslices.replica_servers, parse_target)."""

from __future__ import annotations

from typing import Any

import pytest
from h2ogpt_api.endpointslices import parse_target, replica_servers


def endpoint_slice(addresses: list[tuple[str, bool | None]], ports: list[dict[str, Any]]) -> dict[str, Any]:
    endpoints = []
    for address, ready in addresses:
        conditions = {} if ready is None else {"ready": ready}
        endpoints.append({"addresses": [address], "conditions": conditions})
    return {"addressType": "IPv4", "endpoints": endpoints, "ports": ports}


HTTP = [{"name": "http", "port": 8080, "protocol": "TCP"}]


def test_ready_endpoints_become_replica_urls_of_the_services_form() -> None:
    slices = [
        endpoint_slice([("10.0.0.2", True), ("10.0.0.3", False), ("10.0.0.4", None)], HTTP),
        endpoint_slice([("10.0.1.9", True)], HTTP),
    ]
    assert replica_servers(slices, "http://mistral-inference.ns.svc:80") == [
        "http://10.0.0.2:8080",
        "http://10.0.0.4:8080",  # a missing `ready` means ready (Kubernetes' rule)
        "http://10.0.1.9:8080",
    ]
    assert replica_servers(slices[1:], "openai:http://llama-inference.ns.svc:8000/v1") == [
        "openai:http://10.0.1.9:8080/v1"
    ]
    assert replica_servers(slices[1:], "vllm:vllm-inference:8000") == ["vllm:10.0.1.9:8080"]
    assert replica_servers(slices[1:], "https://user:pw@tgi.ns.svc/") == ["https://user:pw@10.0.1.9:8080/"]
    ipv6 = endpoint_slice([("fd00::5", True)], HTTP)
    assert replica_servers([ipv6], "http://svc:80") == ["http://[fd00::5]:8080"]


def test_the_named_port_is_chosen_and_a_slice_without_it_gives_nothing() -> None:
    ports = [{"name": "metrics", "port": 9000}, {"name": "http", "port": 8080}]
    one = endpoint_slice([("10.0.0.2", True)], ports)
    assert replica_servers([one], "http://svc:80", "http") == ["http://10.0.0.2:8080"]
    assert replica_servers([one], "http://svc:80") == ["http://10.0.0.2:9000"]  # no name: the first
    assert replica_servers([one], "http://svc:80", "grpc") == []
    assert replica_servers([endpoint_slice([("10.0.0.2", True)], [])], "http://svc:80") == []
    assert replica_servers([], "http://svc:80") == []


def test_targets() -> None:
    assert parse_target("team-a/mistral-inference") == ("team-a", "mistral-inference", "")
    assert parse_target("team-a/mistral-inference:http") == ("team-a", "mistral-inference", "http")
    assert parse_target("mistral-inference") == ("", "mistral-inference", "")
    with pytest.raises(ValueError, match="expected <namespace>/<service>"):
        parse_target("team-a/")
