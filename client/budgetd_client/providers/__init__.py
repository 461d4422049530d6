"""Importers for the providers' admin usage APIs and the drift check
(docs/drift.md). Standard library only: the client's base install stays
grpcio + protobuf."""

from budgetd_client.providers._http import (
    HttpPolicy,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
)
from budgetd_client.providers.anthropic import AnthropicAdmin
from budgetd_client.providers.openai import OpenAIAdmin

__all__ = ["AnthropicAdmin", "HttpPolicy", "OpenAIAdmin", "ProviderAuthError", "ProviderError",
           "ProviderRateLimited"]
