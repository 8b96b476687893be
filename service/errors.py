"""Errors of the web layer and how each becomes an HTTP answer.

    ServiceError                    (http_status, detail)
    ├── AuthenticationError   401   no or unknown X-API-Key
    ├── ForbiddenError        403   key not allowed here (admin route, another region's student)
    ├── InvalidFieldError     422   a field passed type checks but names something unknown (detail names it)
    ├── NoModelError          503   no model version loaded yet (registry empty or alias unset)
    ├── StoreUnavailableError 503   Redis could not take a write, or a region-scoped read cannot be
    │                               checked without it
    └── ServiceConfigError          refused configuration at start-up (never an HTTP answer)

Every learnrec error (`models.errors.LearnrecError`) carries its `http_status`; one handler in
`service.main` turns any of them that reaches a route into an answer. Only this package turns domain
errors into HTTP errors; a store outage on a read is a degraded 200, except where the answer would tell
a region-scoped key about a student it may not see: a 503.
"""

from __future__ import annotations

from models.errors import LearnrecError


class ServiceError(LearnrecError):
    """Base of the service's errors; `http_status` and `detail` make the HTTP answer."""

    http_status: int = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AuthenticationError(ServiceError):
    """The request carries no API key, or one that matches no configured key."""

    http_status = 401


class ForbiddenError(ServiceError):
    """The key is valid but not for this route or this student's region."""

    http_status = 403


class InvalidFieldError(ServiceError):
    """A field is well-formed but wrong here (an unknown subject, an unreadable body); answered like
    FastAPI's own validation errors: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``."""

    http_status = 422

    def __init__(self, loc: tuple[str | int, ...], message: str, kind: str = "value_error") -> None:
        super().__init__(message)
        self.loc = loc
        self.kind = kind


class NoModelError(ServiceError):
    """No model version is loaded, so there is nothing to recommend from."""

    http_status = 503


class StoreUnavailableError(ServiceError):
    """The feature store (Redis) is needed and unavailable (a write, or a region check); retry later."""

    http_status = 503


class ServiceConfigError(LearnrecError):
    """The service refuses to start with this configuration (for example dev keys in production)."""
