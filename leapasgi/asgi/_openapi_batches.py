"""The OpenAPI paths of the Files and Batch APIs (served with ``[batches]`` enabled), with
the schemas of their objects: OpenAI's ``file`` and ``batch``."""

from __future__ import annotations

from typing import Any

from ..batches.objects import COMPLETION_WINDOW, ENDPOINTS, BatchStatus
from ._openapi_operations import json_body, operation, path_parameter, query

__all__ = ["batch_paths"]

_INT = {"type": "integer"}
_MAYBE_INT = {"type": ["integer", "null"]}
_MAYBE_STR = {"type": ["string", "null"]}
_EXPIRY = {
    "type": "object",
    "required": ["anchor", "seconds"],
    "properties": {
        "anchor": {"const": "created_at"},
        "seconds": {"type": "integer", "minimum": 3600, "maximum": 2_592_000},
    },
}
FILE = {
    "type": "object",
    "required": ["id", "object", "bytes", "created_at", "filename", "purpose", "status"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "file"},
        "bytes": _INT,
        "created_at": _INT,
        "expires_at": _MAYBE_INT,
        "filename": {"type": "string"},
        "purpose": {"enum": ["batch", "batch_output"]},
        "status": {"const": "processed"},
        "status_details": {"type": "null"},
    },
}
_TIMES = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
BATCH = {
    "type": "object",
    "required": ["id", "object", "endpoint", "input_file_id", "completion_window", "status"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "batch"},
        "endpoint": {"enum": list(ENDPOINTS)},
        "input_file_id": {"type": "string"},
        "completion_window": {"const": COMPLETION_WINDOW},
        "status": {"enum": [status.value for status in BatchStatus]},
        "output_file_id": _MAYBE_STR,
        "error_file_id": _MAYBE_STR,
        "created_at": _INT,
        "expires_at": _INT,
        **dict.fromkeys(_TIMES, _MAYBE_INT),
        "errors": {
            "type": ["object", "null"],
            "properties": {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "param": _MAYBE_STR,
                            "line": _MAYBE_INT,
                        },
                    },
                },
            },
        },
        "request_counts": {
            "type": "object",
            "required": ["total", "completed", "failed"],
            "properties": {"total": _INT, "completed": _INT, "failed": _INT},
        },
        "usage": {"type": "object"},
        "metadata": {
            "type": ["object", "null"],
            "maxProperties": 16,
            "additionalProperties": {"type": "string", "maxLength": 512},
        },
    },
}
BATCH_CREATE = {
    "type": "object",
    "required": ["input_file_id", "endpoint", "completion_window"],
    "additionalProperties": False,
    "properties": {
        "input_file_id": {"type": "string", "minLength": 1},
        "endpoint": {"enum": list(ENDPOINTS)},
        "completion_window": {"const": COMPLETION_WINDOW},
        "metadata": BATCH["properties"]["metadata"],  # type: ignore[index]
        "output_expires_after": _EXPIRY,
    },
}


def _page(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": item},
            "first_id": _MAYBE_STR,
            "last_id": _MAYBE_STR,
            "has_more": {"type": "boolean"},
        },
    }


def batch_paths(security: list[dict[str, list[str]]]) -> dict[str, Any]:
    """``/v1/files`` and ``/v1/batches``: each caller sees only its own (another's: 404)."""
    file_id = path_parameter("file_id", "A file id; only the key that made it sees it.")
    batch_id = path_parameter("batch_id", "A batch id; only the key that made it sees it.")
    after = query("after", "The page after this id.", {"type": "string"})
    upload = operation(
        "Upload a batch input file: JSONL, each line a request; checked line by line (a 400 "
        "names the line), capped in bytes, lines and line length (413)",
        {"200": json_body(FILE, "The file.")},
        tags=["batches"],
        security=security,
    )
    upload["requestBody"] = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "contentMediaType": "application/jsonl"},
                        "purpose": {"const": "batch"},
                        "expires_after[anchor]": {"const": "created_at"},
                        "expires_after[seconds]": {"type": "integer"},
                    },
                }
            }
        },
    }
    return {
        "/v1/files": {
            "post": upload,
            "get": operation(
                "List the caller's files",
                {"200": json_body(_page(FILE), "The files.")},
                tags=["batches"],
                security=security,
                parameters=[
                    after,
                    query("limit", "Files per page, 1 to 10000.", _INT),
                    query("order", "asc or desc (default).", {"enum": ["asc", "desc"]}),
                    query("purpose", "Only files of this purpose.", {"type": "string"}),
                ],
            ),
        },
        "/v1/files/{file_id}": {
            "get": operation(
                "Retrieve a file",
                {"200": json_body(FILE, "The file.")},
                tags=["batches"],
                security=security,
                parameters=[file_id],
            ),
            "delete": operation(
                "Delete a file (409 while a batch not finished reads it)",
                {"200": json_body({"type": "object"}, "Deleted.")},
                tags=["batches"],
                security=security,
                parameters=[file_id],
            ),
        },
        "/v1/files/{file_id}/content": {
            "get": operation(
                "A file's bytes: JSONL",
                {
                    "200": {
                        "description": "The file.",
                        "content": {"application/jsonl": {"schema": {"type": "string"}}},
                    }
                },
                tags=["batches"],
                security=security,
                parameters=[file_id],
            )
        },
        "/v1/batches": {
            "post": operation(
                "Create a batch: the gateway answers each line through its routing, limits and "
                "budgets, behind interactive requests",
                {"200": json_body(BATCH, "The batch, validating.")},
                tags=["batches"],
                security=security,
                body={"schema": BATCH_CREATE},
            ),
            "get": operation(
                "List the caller's batches, newest first",
                {"200": json_body(_page(BATCH), "The batches.")},
                tags=["batches"],
                security=security,
                parameters=[after, query("limit", "Batches per page, 1 to 100.", _INT)],
            ),
        },
        "/v1/batches/{batch_id}": {
            "get": operation(
                "Retrieve a batch",
                {"200": json_body(BATCH, "The batch.")},
                tags=["batches"],
                security=security,
                parameters=[batch_id],
            )
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": operation(
                "Cancel a batch: cancelling while its lines in flight end, then cancelled",
                {"200": json_body(BATCH, "The batch.")},
                tags=["batches"],
                security=security,
                parameters=[batch_id],
            )
        },
    }
