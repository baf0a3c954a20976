"""The Lease part of a Kubernetes API server, in memory, for the faults a real one cannot be made
to show on demand (``available = False``: 503 from every request; a server that is gone).

Everything else about the ``kubernetes`` provider is tested against a real kube-apiserver with
etcd (tests/support/kube_apiserver.py, test_kubernetes_real.py), which also checks the contract
below on the real thing. Known differences from it, harmless to the fault tests: a PUT that
changes nothing still gets a new ``resourceVersion`` here (the real server keeps the old one);
names are not validated (the real server wants DNS subdomains); DELETE is not served.

Written from the Kubernetes API reference (``coordination.k8s.io/v1`` Lease; ``Status``
objects; optimistic concurrency through ``metadata.resourceVersion``):

* ``GET    /apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}`` → 200, or 404 NotFound;
* ``POST   /apis/coordination.k8s.io/v1/namespaces/{ns}/leases`` → 201, 409 AlreadyExists, 400
  for a namespace that differs from the URL's, 500 when ``resourceVersion`` is set (the storage
  layer's "resourceVersion should not be set on objects to be created");
* ``PUT    /apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}`` → 200 with a new
  ``resourceVersion``; 409 Conflict when the body's ``resourceVersion`` is not the stored one;
  422 Invalid without one (Leases do not allow unconditional updates) or with a non-positive
  ``leaseDurationSeconds`` / negative ``leaseTransitions``; 201 when absent (Leases allow
  create-on-update, whatever ``resourceVersion`` the body carries); 400 when the body's name is
  not the URL's;
* every request needs ``Authorization: Bearer <one of tokens>`` → else 401 Unauthorized;
* other verbs → 405.

``available = False`` makes every request answer 503, like an API server that is down behind
its load balancer.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from aiohttp import web

PREFIX = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
_RESOURCE = "leases.coordination.k8s.io"


def _status(code: int, reason: str, message: str, name: str | None = None) -> web.Response:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if name is not None:
        body["details"] = {"name": name, "group": "coordination.k8s.io", "kind": "leases"}
    return web.json_response(body, status=code)


class LeaseEmulator:
    """Serve the Lease endpoints on ``127.0.0.1`` (a free port); use as an async context."""

    def __init__(
        self, tokens: Collection[str] = ("test-token",), *, tls: ssl.SSLContext | None = None
    ) -> None:
        """``tls`` serves HTTPS with that server context instead of plain HTTP."""
        self.tokens = set(tokens)
        self._tls = tls
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.available = True
        self.requests: list[tuple[str, str, int]] = []
        """(method, path, status) of every request, in order."""
        self._version = 100
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._record])
        app.router.add_route("*", PREFIX.format(namespace="{namespace}"), self._collection)
        app.router.add_route("*", PREFIX.format(namespace="{namespace}") + "/{name}", self._item)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._tls)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if self._tls else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def holder(self, namespace: str, name: str) -> str | None:
        lease = self.leases.get((namespace, name))
        if lease is None:
            return None
        return lease.get("spec", {}).get("holderIdentity") or None

    # -- plumbing -------------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse
        if not self.available:
            response = _status(
                503, "ServiceUnavailable", "the server is currently unable to handle the request"
            )
        elif request.headers.get("Authorization", "") not in {f"Bearer {t}" for t in self.tokens}:
            response = _status(401, "Unauthorized", "Unauthorized")
        else:
            response = await handler(request)
        self.requests.append((request.method, request.path, response.status))
        return response

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = json.loads(await request.text())
        except ValueError:
            return _status(400, "BadRequest", "the request body is not valid JSON")
        if not isinstance(body, dict) or body.get("kind", "Lease") != "Lease":
            return _status(400, "BadRequest", "the request body is not a Lease")
        return body

    @staticmethod
    def _invalid(name: str, body: dict[str, Any]) -> web.Response | None:
        spec = body.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        if duration is not None and (not isinstance(duration, int) or duration <= 0):
            return _status(
                422,
                "Invalid",
                f'Lease.coordination.k8s.io "{name}" is invalid: spec.leaseDurationSeconds: '
                f"Invalid value: {duration}: must be greater than 0",
                name,
            )
        transitions = spec.get("leaseTransitions")
        if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
            return _status(
                422,
                "Invalid",
                f'Lease.coordination.k8s.io "{name}" is invalid: spec.leaseTransitions: '
                f"Invalid value: {transitions}: must be greater than or equal to 0",
                name,
            )
        return None

    # -- handlers -------------------------------------------------------------------------------

    async def _collection(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return _status(405, "MethodNotAllowed", "the server does not allow this method")
        namespace = request.match_info["namespace"]
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        metadata = dict(body.get("metadata") or {})
        name = metadata.get("name")
        if not name:
            return _status(422, "Invalid", "metadata.name: Required value: name is required")
        if metadata.get("namespace", namespace) != namespace:
            return _status(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        if metadata.get("resourceVersion"):
            return _status(
                500, "InternalError", "resourceVersion should not be set on objects to be created"
            )
        if (namespace, name) in self.leases:
            return _status(409, "AlreadyExists", f'{_RESOURCE} "{name}" already exists', name)
        return self._create(namespace, name, metadata, body)

    def _create(
        self, namespace: str, name: str, metadata: dict[str, Any], body: dict[str, Any]
    ) -> web.Response:
        invalid = self._invalid(name, body)
        if invalid is not None:
            return invalid
        metadata.update(
            name=name,
            namespace=namespace,
            resourceVersion=self._next_version(),
            uid=str(uuid.uuid4()),
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": dict(body.get("spec") or {}),
        }
        self.leases[(namespace, name)] = lease
        return web.json_response(lease, status=201)

    async def _item(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        stored = self.leases.get((namespace, name))
        if request.method == "GET":
            if stored is None:
                return _status(404, "NotFound", f'{_RESOURCE} "{name}" not found', name)
            return web.json_response(stored)
        if request.method != "PUT":
            return _status(405, "MethodNotAllowed", "the server does not allow this method")
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        metadata = dict(body.get("metadata") or {})
        if metadata.get("name", name) != name:
            return _status(
                400,
                "BadRequest",
                f"the name of the object ({metadata.get('name')}) does not match the name on "
                f"the URL ({name})",
            )
        if stored is None:
            return self._create(namespace, name, metadata, body)
        version = metadata.get("resourceVersion")
        if not version:
            return _status(
                422,
                "Invalid",
                f'Lease.coordination.k8s.io "{name}" is invalid: metadata.resourceVersion: '
                "Invalid value: 0x0: must be specified for an update",
                name,
            )
        if version != stored["metadata"]["resourceVersion"]:
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {_RESOURCE} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                name,
            )
        invalid = self._invalid(name, body)
        if invalid is not None:
            return invalid
        updated_metadata = {
            **stored["metadata"],
            "labels": metadata.get("labels", stored["metadata"].get("labels")),
            "resourceVersion": self._next_version(),
        }
        if updated_metadata["labels"] is None:
            del updated_metadata["labels"]
        lease = {**stored, "metadata": updated_metadata, "spec": dict(body.get("spec") or {})}
        self.leases[(namespace, name)] = lease
        return web.json_response(lease)
