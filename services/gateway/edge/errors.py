"""Errors the gateway shows to clients, each carrying its status and rendering its own JSON body.

    GatewayError
    ├── AuthError            401 {"error": "Invalid or expired token"}
    ├── ForbiddenError       403 {"error": "Admin role required"}
    │   └── TenantMismatch   403 {"error": "X-Tenant-ID names another tenant than the key's"}
    └── ApiError             an OpenAI-style body {"error": {"message", "type", "param", "code"}}
        ├── BadRequest       400 (malformed JSON, missing or invalid fields)
        ├── PayloadTooLarge  413
        ├── ModelNotFound    404
        │   └── ModelNotConfigured  404, code MODEL_NOT_CONFIGURED: the model exists, not for this tenant
        └── UpstreamError    502 / 503 / 504 when no endpoint could answer
"""

from __future__ import annotations

from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode


class GatewayError(Exception):
    status = 500
    headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": str(self)}

    def render(self) -> bytes:
        return _encode(self.body())


class AuthError(GatewayError):
    status = 401

    def __init__(self) -> None:
        super().__init__("Invalid or expired token")


class ForbiddenError(GatewayError):
    status = 403

    def __init__(self) -> None:
        super().__init__("Admin role required")


class TenantMismatch(ForbiddenError):
    def __init__(self) -> None:
        GatewayError.__init__(self, "X-Tenant-ID names another tenant than the key's")


class ApiError(GatewayError):
    kind = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


class BadRequest(ApiError):
    status = 400
    code = "invalid_request"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class ModelNotFound(ApiError):
    status = 404
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"None of the configured endpoints advertise the model '{model}'", param="model")


class ModelNotConfigured(ModelNotFound):
    """The model exists, but the tenant has no use of it (not assigned, disabled, or no default set)."""

    code = "MODEL_NOT_CONFIGURED"

    def __init__(self, model: str, tenant_id: str) -> None:
        message = f"No default model is configured for tenant '{tenant_id}'" if model == "default" \
            else f"Model '{model}' is not configured for tenant '{tenant_id}'"
        ApiError.__init__(self, message, param="model")


class UpstreamError(ApiError):
    status = 502
    kind = "upstream_error"
    code = "upstream_unavailable"
