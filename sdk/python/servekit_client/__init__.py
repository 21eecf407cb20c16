"""servekit's Python client: `Client` (sync) and `AsyncClient` (asyncio) for every `/v1`
route and the admin API, typed responses, retries that honour `Retry-After`, and
exceptions that carry the status, the service's error code and the request id."""

from servekit_client._async import AsyncAdmin, AsyncClient
from servekit_client._base import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL, __version__
from servekit_client._retry import RetryPolicy
from servekit_client._sync import Admin, Client
from servekit_client.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DeprecatedRouteWarning,
    GatewayTimeoutError,
    InternalServerError,
    InvalidArgumentError,
    InvalidEventsError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServekitError,
    ServiceUnavailableError,
    UnexpectedResponseError,
    UnprocessableEntityError,
)
from servekit_client.response import RateLimit, ResponseInfo, ResponseList

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "Admin",
    "AsyncAdmin",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "DeprecatedRouteWarning",
    "GatewayTimeoutError",
    "InternalServerError",
    "InvalidArgumentError",
    "InvalidEventsError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimit",
    "RateLimitError",
    "ResponseInfo",
    "ResponseList",
    "RetryPolicy",
    "ServekitError",
    "ServiceUnavailableError",
    "UnexpectedResponseError",
    "UnprocessableEntityError",
    "__version__",
]
