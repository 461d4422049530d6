"""budgetd: enforce LLM API spend budgets in Redis, over gRPC."""

__version__ = "0.2.0"
