"""budgetd_client: reserve LLM spend with budgetd before a model call, settle
it after. Needs only grpcio and protobuf."""

from budgetd_client._channel import CallPolicy
from budgetd_client.aio import AsyncAdminClient, AsyncBudgetClient
from budgetd_client.errors import (
    AlreadyExists,
    BudgetError,
    BudgetExceeded,
    BudgetUnavailable,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from budgetd_client.sync import AdminClient, BudgetClient
from budgetd_client.types import (
    Alert,
    BudgetStatus,
    Denial,
    Recorded,
    Remaining,
    Reservation,
    Rule,
    Scope,
    Settlement,
    Usage,
    UsageReport,
    UsageRow,
    WindowStatus,
)

__version__ = "0.1.0"

__all__ = [
    "AdminClient",
    "Alert",
    "AlreadyExists",
    "AsyncAdminClient",
    "AsyncBudgetClient",
    "BudgetClient",
    "BudgetError",
    "BudgetExceeded",
    "BudgetStatus",
    "BudgetUnavailable",
    "CallPolicy",
    "Denial",
    "FailedPrecondition",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "Recorded",
    "Remaining",
    "Reservation",
    "Rule",
    "Scope",
    "Settlement",
    "Unauthenticated",
    "Usage",
    "UsageReport",
    "UsageRow",
    "WindowStatus",
]
