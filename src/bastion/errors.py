"""One exception hierarchy for everything bastion reports to a caller.

Each class carries the HTTP status, the OpenAI error ``type`` and ``code``; the API maps
exceptions to responses by class in one place (``bastion.api.errors``). Messages are written
for the caller and never contain secrets or internal exception text.
"""

from __future__ import annotations

from typing import Any, ClassVar


class BastionError(Exception):
    """Base class: an error with a caller-facing message and an OpenAI envelope."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        """Extra response headers this error calls for."""
        return {}

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(BastionError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidParameterError(InvalidRequestError):
    code = "invalid_parameter"


class InvalidNameError(InvalidParameterError):
    """An operator-supplied name that would become a file or directory name is unsafe."""

    code = "invalid_name"


class MalformedJSONError(InvalidRequestError):
    code = "invalid_json"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class TemplateRenderError(InvalidRequestError):
    """The chat template rejected the conversation or went past its bounds rendering it."""

    code = "invalid_messages"


class ModelNotChatError(InvalidRequestError):
    """A chat request to a completion-only model (a base model, or one without a template)."""

    code = "model_not_chat"


class ModelNotFoundError(BastionError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class InvalidModelEntryError(BastionError):
    """A catalog entry failed validation; the message lists every field to fix."""

    status = 422
    type = "invalid_request_error"
    code = "invalid_model_entry"


class ModelConflictError(BastionError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class InsufficientScopeError(BastionError):
    """The caller is authenticated but its credential lacks the scope the route needs."""

    status = 403
    type = "invalid_request_error"
    code = "insufficient_scope"


class RouteNotFoundError(BastionError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowedError(BastionError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLargeError(BastionError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RequestTimeoutError(BastionError):
    """The client took too long to send its request head or body."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class HeadersTooLargeError(BastionError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class MalformedHttpError(InvalidRequestError):
    """The HTTP parser refused the request: its line, a header or the chunked framing."""

    code = "malformed_http_request"


class TooManyConnectionsError(BastionError):
    """A listener, or one client address on it, already holds its cap of open connections."""

    status = 503
    type = "server_error"
    code = "too_many_connections"


class TooManyRequestsError(BastionError):
    """Every slot is busy and the wait queue is full; the client should retry later."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServiceUnavailableError(BastionError):
    status = 503
    type = "server_error"
    code = "service_unavailable"

    def __init__(
        self, message: str, *, param: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class ModelUnavailableError(ServiceUnavailableError):
    """The model exists but cannot answer now: it failed, or did not load in time."""

    code = "model_unavailable"


class SwapInProgressError(ModelConflictError):
    """Another load, unload or swap is running; the message says which."""

    code = "swap_in_progress"


class EngineError(BastionError):
    """The engine failed while producing a response."""

    status = 500
    type = "server_error"
    code = "engine_error"


class ModelLoadError(BastionError):
    """A model could not be imported, verified or loaded."""

    status = 503
    type = "server_error"
    code = "model_unavailable"


class ConfigError(BastionError):
    """Settings or files under BASTION_HOME are invalid (reported by the CLI, exit 2)."""

    status = 500
    type = "server_error"
    code = "config_error"
