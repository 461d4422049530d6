"""Errors a request can end in, each mapped to one gRPC status code."""

from __future__ import annotations

import grpc


class BudgetdError(Exception):
    """Base class: a request failed with a gRPC status and a clear message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(BudgetdError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field)


class NotFound(BudgetdError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(BudgetdError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(BudgetdError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(BudgetdError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(BudgetdError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(BudgetdError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(BudgetdError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
