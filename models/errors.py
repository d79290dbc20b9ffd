"""One error taxonomy for every layer.

Backends translate their SDK's exceptions into these at the boundary. Every error carries a
message that says what to change and a ``retryable`` flag the conductor uses to decide between
a retry and a spoken apology.
"""

from __future__ import annotations


class AvatarError(Exception):
    """Base of all project errors."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class ConfigError(AvatarError):
    """Configuration is malformed: names the file, the key and what is allowed."""


class InputError(AvatarError):
    """User input (audio, text) was rejected; the session goes on."""


class BackendError(AvatarError):
    """A model backend failed while serving a request."""

    retryable = True


class BackendUnavailable(AvatarError):
    """A backend cannot be constructed here (missing extra, missing model file, no GPU)."""


class ClusterFull(BackendError):
    """No capacity for a new session here (``reason``: full or draining); the gateway answers
    503 with Retry-After. Never raised for a session already admitted."""

    retryable = True

    def __init__(self, message: str, reason: str = "full") -> None:
        super().__init__(message)
        self.reason = reason


class SessionNotFound(InputError):
    """The session id is unknown here, ended or timed out (HTTP 404)."""


class SessionOwnerLost(BackendError):
    """The replica that hosted this session is gone; resume it on another (HTTP 410)."""

    retryable = False


class AuthError(AvatarError):
    """A request without valid credentials: a missing, malformed, expired or forged token or
    API key (HTTP 401), or valid ones for another session, tenant or region (``status`` 403)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class RateLimited(AvatarError):
    """Too many new sessions from one client address or tenant (HTTP 429 + Retry-After)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
