"""Typed domain errors and the one place that maps them to gRPC status codes.

Domain code (sessions, engines, registries) raises these; servicers call ``status_for`` and
abort with what it returns, so the same failure reads the same everywhere and UNKNOWN is a
bug. Messages never echo unbounded input: quote client text through ``clip``.
"""

from __future__ import annotations

import grpc

MAX_QUOTED_CHARS = 80


def clip(text: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr`` of client-supplied text, cut to ``limit`` characters (with its full length said)."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} chars)"


class DomainError(Exception):
    """Base of the errors a servicer turns into a status; ``code`` says which."""

    code = grpc.StatusCode.INTERNAL


class InvalidInput(DomainError, ValueError):
    """A malformed request: a value outside its range, an unknown name, an empty prompt."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class LimitExceeded(InvalidInput):
    """A well-formed request over a configured size or capacity limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotFound(DomainError, LookupError):
    """The named thing (session, node) does not exist (any more)."""

    code = grpc.StatusCode.NOT_FOUND

    def __str__(self) -> str:  # KeyError-style quoting would double the quotes
        return str(self.args[0]) if self.args else "not found"


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class PreconditionFailed(DomainError):
    """The request is fine but this node cannot serve it as configured (e.g. no cloud to route to)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(DomainError):
    """A peer this request needs cannot be reached or refused to serve it."""

    code = grpc.StatusCode.UNAVAILABLE


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a failed call is answered with."""
    if isinstance(exc, DomainError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
