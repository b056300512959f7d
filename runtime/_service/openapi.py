"""The service's OpenAPI 3.1 schema (``GET /openapi.json``), written out by hand."""

from __future__ import annotations

from typing import Any

from .._spec.feature_set import FeatureSet

__all__ = ["openapi_schema"]

_ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "string"},
        "detail": {"type": "string"},
        "field": {"type": ["string", "null"]},
        "accepted": {"type": "integer"},
        "rejected": {
            "type": "array",
            "items": {"type": "object"},
            "description": "the refused events, the first 1,000 of them",
        },
        "rejected_count": {"type": "integer", "description": "every refused event"},
    },
    "required": ["error", "detail"],
}
_KEY = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
_VECTOR = {
    "type": "object",
    "properties": {
        "key": _KEY,
        "values": {"type": "object"},
        "last_event_time": {"type": ["integer", "null"]},
        "watermark": {"type": ["integer", "null"]},
        "updated_at": {"type": ["number", "null"]},
        "lag_ms": {"type": ["number", "null"]},
        "as_of": {"type": ["integer", "null"]},
    },
}
_BODY_TYPES = ("application/json", "application/msgpack")


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {kind: {"schema": schema} for kind in _BODY_TYPES}}


def openapi_schema(feature_set: FeatureSet) -> dict[str, Any]:
    """The schema of the service of ``feature_set``."""
    names = list(feature_set.names)
    as_of = {
        "name": "as_of",
        "in": "query",
        "required": False,
        "description": "read as of a time: a number in the feature set's time unit, an "
        "ISO-8601 time, 'now' or 'last_event'",
        "schema": {"type": "string"},
    }
    event = {"type": "object", "required": [feature_set.key, feature_set.time]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"featurist: {feature_set.name}",
            "version": "1",
            "description": "A feature service over a featurist runtime (docs/service.md).",
        },
        "paths": {
            "/events": {
                "post": {
                    "summary": "Ingest one event or a list of events (JSON or MessagePack)",
                    "parameters": [
                        {
                            "name": "stream",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": list(feature_set.stream_names)},
                        }
                    ],
                    "requestBody": _body({"oneOf": [event, {"type": "array", "items": event}]}),
                    "responses": {
                        "200": _json(
                            "accepted",
                            {"type": "object", "properties": {"accepted": {"type": "integer"}}},
                        ),
                        "400": _error("the body cannot be decoded, or an unknown stream"),
                        "413": _error("a body over 16 MiB"),
                        "422": _error("events were refused (listed); the others were ingested"),
                        "503": _error("the runtime is not running"),
                    },
                }
            },
            "/features/{key}": {
                "get": {
                    "summary": "The feature vector of one key",
                    "parameters": [
                        {"name": "key", "in": "path", "required": True, "schema": _KEY},
                        {
                            "name": "features",
                            "in": "query",
                            "required": False,
                            "description": "a subset, comma-separated or repeated",
                            "schema": {
                                "type": "array",
                                "items": {"type": "string", "enum": names},
                            },
                        },
                        as_of,
                    ],
                    "responses": {
                        "200": _json("the vector", {"$ref": "#/components/schemas/Vector"}),
                        "400": _error("a bad key or as_of"),
                        "404": _error("an unknown feature"),
                        "503": _error("the runtime is not running"),
                    },
                }
            },
            "/features": {
                "post": {
                    "summary": "The vectors of many keys, in the order given",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["keys"],
                            "properties": {
                                "keys": {"type": "array", "items": _KEY},
                                "features": {
                                    "type": "array",
                                    "items": {"type": "string", "enum": names},
                                    "description": "a subset; absent or [] for every feature",
                                },
                                "as_of": {"type": ["string", "number"]},
                            },
                            "additionalProperties": False,
                        }
                    ),
                    "responses": {
                        "200": _json(
                            "the vectors",
                            {
                                "type": "object",
                                "properties": {
                                    "vectors": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Vector"},
                                    }
                                },
                            },
                        ),
                        "400": _error("a bad body (an unknown field), key or as_of"),
                        "404": _error("an unknown feature"),
                        "413": _error("a body over 16 MiB, or more keys than max_keys"),
                        "503": _error("the runtime is not running"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness: the runtime runs and no input failed",
                    "responses": {"200": _json("ok", {}), "503": _json("failing", {})},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: restored and every input caught up",
                    "responses": {"200": _json("ready", {}), "503": _json("not yet", {})},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (docs/metrics.md)",
                    "responses": {"200": {"description": "Prometheus text"}},
                }
            },
            "/status": {
                "get": {
                    "summary": "What the status page shows, as JSON",
                    "responses": {"200": _json("status", {"type": "object"})},
                }
            },
        },
        "components": {"schemas": {"Error": _ERROR, "Vector": _VECTOR}},
    }
