"""guard(): wrap an Anthropic or OpenAI SDK client so every model call is
reserved with budgetd before it leaves and settled after.

    budget = Budget(BudgetClient("budgetd:50051"))
    client = guard(anthropic.Anthropic(), budget=budget, scope="acme/search")
    msg = client.messages.create(model=..., max_tokens=1024, messages=[...])

The SDKs are optional extras (`budgetd-client[anthropic]`, `[openai]`); this
module imports neither.
"""

from __future__ import annotations

from typing import Any

from budgetd_client.hooks import AsyncBudget, Budget
from budgetd_client.integrations._common import Fallbacks
from budgetd_client.types import Scope, ScopeLike


def guard(client: Any, *, budget: Budget | AsyncBudget, scope: ScopeLike,
          fallback_models: Fallbacks = ()) -> Any:
    """fallback_models: a list tried after the requested model (the server
    grants the first that fits), or a mapping from requested model to its list."""
    name = type(client).__name__
    package = type(client).__module__.split(".")[0]
    is_async = name.startswith("Async")
    if is_async != isinstance(budget, AsyncBudget):
        raise TypeError(f"{name} needs {'AsyncBudget' if is_async else 'Budget'}")
    s = str(Scope.parse(scope))
    if package == "anthropic":
        from budgetd_client.integrations.anthropic import GuardedAnthropic
        return GuardedAnthropic(client, budget, s, fallback_models)
    if package == "openai":
        from budgetd_client.integrations.openai import GuardedOpenAI
        return GuardedOpenAI(client, budget, s, fallback_models)
    raise TypeError(f"guard() supports anthropic and openai clients, not {name}; use "
                    "budget.reserve(...) as a context manager for other providers")


__all__ = ["guard"]
