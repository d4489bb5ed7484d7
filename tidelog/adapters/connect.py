"""Kafka Connect, seen from tidelog: its REST API over httpx, and the one place its
answers are mapped into the error tree.

Unit tests pass `transport=httpx.MockTransport(handler)`, so the connector driver is
tested without a Connect worker.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx

from tidelog.errors import (
    ConnectorError,
    ConnectorFailed,
    ConnectorNotFound,
    ConnectorRejected,
    ConnectUnreachable,
)
from tidelog.settings import Settings

__all__ = ["KafkaConnect"]

TIMEOUT = 30.0


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default context, built once: loading the CA bundle took ~50 ms per client,
    and one capture check makes four (BENCHMARKS.md, TPC-H)."""
    return httpx.create_ssl_context()


class KafkaConnect:
    """A Kafka Connect worker's REST API."""

    def __init__(self, url: str, *, timeout: float = TIMEOUT,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                    verify=_ssl_context())

    @classmethod
    def for_settings(cls, settings: Settings, *, timeout: float = TIMEOUT,
                     transport: httpx.BaseTransport | None = None) -> KafkaConnect:
        return cls(settings.require("connect_url"), timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> KafkaConnect:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ConnectUnreachable(
                f"Kafka Connect at {self.url} is unreachable ({exc}); is it running? "
                "(`tidelog stack status`, or check TIDELOG_CONNECT_URL)", connect_url=self.url
            ) from exc

    def _json(self, resp: httpx.Response, what: str) -> Any:
        try:
            return resp.json()
        except ValueError as exc:
            raise ConnectorFailed(f"Kafka Connect at {self.url} answered {what} with "
                                  f"HTTP {resp.status_code} and no JSON: {resp.text[:300]}"
                                  ) from exc

    def _refused(self, resp: httpx.Response, what: str) -> ConnectorError:
        """A 4xx is Connect refusing the request itself; 409 (a rebalance) and 5xx are
        the worker failing it."""
        text = f"{what}: HTTP {resp.status_code} {resp.text[:1000]}"
        if resp.status_code == 409 or resp.status_code >= 500:
            return ConnectorFailed(f"Kafka Connect at {self.url} failed to {text}; retry, "
                                   "or see the Connect worker's log")
        return ConnectorRejected(f"Kafka Connect rejected the request to {text}")

    # -- the calls tidelog makes ----------------------------------------------------

    def version(self) -> str:
        resp = self._request("GET", "/")
        if resp.status_code != 200:
            raise self._refused(resp, "report its version")
        return str(self._json(resp, "GET /").get("version", "?"))

    def plugins(self) -> list[dict[str, Any]]:
        resp = self._request("GET", "/connector-plugins")
        if resp.status_code != 200:
            raise self._refused(resp, "list connector plugins")
        return list(self._json(resp, "GET /connector-plugins"))

    def connectors(self) -> list[str]:
        resp = self._request("GET", "/connectors")
        if resp.status_code != 200:
            raise self._refused(resp, "list connectors")
        return [str(n) for n in self._json(resp, "GET /connectors")]

    def validate(self, config: dict[str, Any]) -> None:
        """ConnectorRejected naming every field Connect finds wrong."""
        cls = config["connector.class"].rsplit(".", 1)[-1]
        resp = self._request("PUT", f"/connector-plugins/{cls}/config/validate", json=config)
        if resp.status_code != 200:
            if resp.status_code >= 500:
                raise self._refused(resp, f"validate the config of {config.get('name')}")
            raise ConnectorRejected(f"Kafka Connect rejected the config: {resp.text[:1000]}")
        body = self._json(resp, "the validation")
        if body.get("error_count", 0):
            errors = [
                f"{c['value']['name']}: {'; '.join(c['value']['errors'])}"
                for c in body.get("configs", []) if c["value"].get("errors")
            ]
            raise ConnectorRejected("Kafka Connect rejected the config: " + " | ".join(errors),
                                    errors=errors)

    def put_config(self, name: str, config: dict[str, Any]) -> bool:
        """Create or update connector `name`; True when it was created."""
        resp = self._request("PUT", f"/connectors/{name}/config", json=config)
        if resp.status_code not in (200, 201):
            raise self._refused(resp, f"create or update connector {name}")
        return resp.status_code == 201

    def status(self, name: str) -> dict[str, Any]:
        resp = self._request("GET", f"/connectors/{name}/status")
        if resp.status_code == 404:
            raise ConnectorNotFound(f"no connector named {name}; create it with "
                                    "`tidelog connector apply`", connector=name)
        if resp.status_code != 200:
            raise self._refused(resp, f"report the status of {name}")
        return dict(self._json(resp, f"the status of {name}"))

    def delete(self, name: str) -> bool:
        """Remove connector `name`; False when there was none."""
        resp = self._request("DELETE", f"/connectors/{name}")
        if resp.status_code == 404:
            return False
        if resp.status_code not in (200, 204):
            raise self._refused(resp, f"delete connector {name}")
        return True

    def restart(self, name: str) -> None:
        resp = self._request("POST", f"/connectors/{name}/restart",
                             params={"includeTasks": "true"})
        if resp.status_code == 404:
            raise ConnectorNotFound(f"no connector named {name}; create it with "
                                    "`tidelog connector apply`", connector=name)
        if resp.status_code not in (200, 202, 204):
            raise self._refused(resp, f"restart connector {name}")

    def config(self, name: str) -> dict[str, Any] | None:
        """Connector `name`'s configuration, or None when there is no such connector."""
        resp = self._request("GET", f"/connectors/{name}/config")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._refused(resp, f"report the config of {name}")
        return dict(self._json(resp, f"the config of {name}"))

    def tasks(self, name: str) -> list[dict[str, Any]]:
        """The task configurations Connect generated for `name` ([] while it has none)."""
        resp = self._request("GET", f"/connectors/{name}/tasks")
        if resp.status_code in (404, 409):  # not assigned yet, or mid-rebalance
            return []
        if resp.status_code != 200:
            raise self._refused(resp, f"list the tasks of {name}")
        return list(self._json(resp, f"the tasks of {name}"))

    def offsets(self, name: str) -> list[dict[str, Any]]:
        """The source offsets `name` committed (Debezium's position and snapshot state)."""
        resp = self._request("GET", f"/connectors/{name}/offsets")
        if resp.status_code == 404:
            raise ConnectorNotFound(f"no connector named {name}; create it with "
                                    "`tidelog connector apply`", connector=name)
        if resp.status_code != 200:
            raise self._refused(resp, f"report the offsets of {name}")
        return list(self._json(resp, f"the offsets of {name}").get("offsets") or [])

