"""Model ids as callers and providers spell them -> the keys a pricing table is
indexed by. One definition shared by the server's pricing (service/budgetd/
pricing.py, which prices Reserve/Record) and the drift check (providers/
drift.py, which joins the provider's usage with budgetd's ledger), so both
agree on which names are the same model. Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# What a model id may look like; longer or stranger names resolve to nothing.
MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")

# Bedrock: optional cross-region prefix, provider prefix, "-v1:0"-style version suffix.
_BEDROCK_RE = re.compile(
    r"^(?:(?:us|eu|apac|global|jp|au|ca|us-gov)\.)?"
    r"(?:anthropic|openai|deepseek|google)\.(.+?)(?:-v[0-9]+(?::[0-9a-z]+)*)?$"
)
_DOTTED_VERSION_RE = re.compile(r"(?<=[0-9])\.(?=[0-9])")
# Snapshot dates: Anthropic "-20250929", OpenAI "-2024-07-18".
_DATE_SUFFIX_RE = re.compile(r"^(.+?)-(?:[0-9]{8}|[0-9]{4}-[0-9]{2}-[0-9]{2})$")


def model_candidates(model: str) -> Iterator[str]:
    """Lowercase index keys to try for a model id, most literal first, so an
    explicit alias (a dated snapshot priced on its own row) wins over the
    undated model. Yields nothing for a name that is not a model id."""
    if not isinstance(model, str) or not MODEL_ID_RE.match(model):
        return
    seen: set[str] = set()

    def fresh(*names: str) -> Iterator[str]:
        for n in names:
            if n not in seen:
                seen.add(n)
                yield n

    name = model.lower()
    yield from fresh(name)
    if "/" in name:  # OpenRouter "anthropic/claude-sonnet-4.5", Vertex resource paths
        name = name.rsplit("/", 1)[1]
        yield from fresh(name)
    m = _BEDROCK_RE.match(name)
    if m:
        name = m.group(1)
        yield from fresh(name)
    if "@" in name:  # Vertex "claude-sonnet-4-5@20250929"
        base, _, version = name.partition("@")
        yield from fresh(f"{base}-{version}")
        name = base
        yield from fresh(name)
    dashed = _DOTTED_VERSION_RE.sub("-", name)  # OpenRouter "claude-3.5-haiku"
    yield from fresh(dashed)
    m = _DATE_SUFFIX_RE.match(name)
    if m:
        # The undated name as written ("gpt-4.1-mini"), then dashed ("claude-3-5-haiku").
        yield from fresh(m.group(1), _DOTTED_VERSION_RE.sub("-", m.group(1)))
