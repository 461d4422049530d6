"""Client errors: one small hierarchy, mapped from gRPC status codes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from budgetd_client.types import Denial


class BudgetError(Exception):
    """Base class of every budgetd client error."""

    code: grpc.StatusCode | None = None

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(BudgetError):
    """INVALID_ARGUMENT: the message names the bad field."""


class NotFound(BudgetError):
    pass


class AlreadyExists(BudgetError):
    """The request_id was used before with different content."""


class FailedPrecondition(BudgetError):
    """E.g. an unknown model without an explicit cost."""


class PermissionDenied(BudgetError):
    pass


class Unauthenticated(BudgetError):
    pass


class BudgetUnavailable(BudgetError):
    """budgetd (or its Redis) could not be reached within the deadline."""


class BudgetExceeded(BudgetError):
    """A reservation was denied; `denial` says which rule."""

    def __init__(self, denial: Denial | None, message: str | None = None) -> None:
        if message is None:
            if denial is not None:
                message = (f"budget exceeded at {denial.scope} ({denial.window} "
                           f"{denial.unit}): limit {denial.limit}, used {denial.used}, "
                           f"reserved {denial.reserved}, requested {denial.requested}")
            else:
                message = "budget exceeded"
        super().__init__(message)
        self.denial = denial


_BY_CODE: dict[grpc.StatusCode, type[BudgetError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: BudgetUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: BudgetUnavailable,
}

# Safe to retry with the same request: the server dedupes by request_id.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def from_rpc_error(e: Any) -> BudgetError:
    code = e.code()
    cls = _BY_CODE.get(code, BudgetError)
    return cls(f"{code.name}: {e.details()}", code)


def from_code(code_value: int, message: str) -> BudgetError:
    """An error from a numeric gRPC status code (a ReserveBatch item's)."""
    code = next((c for c in grpc.StatusCode if c.value[0] == code_value), grpc.StatusCode.UNKNOWN)
    cls = _BY_CODE.get(code, BudgetError)
    return cls(f"{code.name}: {message}", code)
