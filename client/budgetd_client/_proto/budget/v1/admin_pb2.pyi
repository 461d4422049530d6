from budgetd_client._proto.budget.v1 import budget_pb2 as _budget_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BudgetRule(_message.Message):
    __slots__ = ("scope", "window", "unit", "limit", "mode", "alert_thresholds_percent")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ALERT_THRESHOLDS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    scope: _budget_pb2.Scope
    window: _budget_pb2.Window
    unit: _budget_pb2.Unit
    limit: int
    mode: _budget_pb2.Mode
    alert_thresholds_percent: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, scope: _Optional[_Union[_budget_pb2.Scope, _Mapping]] = ..., window: _Optional[_Union[_budget_pb2.Window, str]] = ..., unit: _Optional[_Union[_budget_pb2.Unit, str]] = ..., limit: _Optional[int] = ..., mode: _Optional[_Union[_budget_pb2.Mode, str]] = ..., alert_thresholds_percent: _Optional[_Iterable[int]] = ...) -> None: ...

class SetBudgetRequest(_message.Message):
    __slots__ = ("rule",)
    RULE_FIELD_NUMBER: _ClassVar[int]
    rule: BudgetRule
    def __init__(self, rule: _Optional[_Union[BudgetRule, _Mapping]] = ...) -> None: ...

class SetBudgetResponse(_message.Message):
    __slots__ = ("rule", "changed")
    RULE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    rule: BudgetRule
    changed: bool
    def __init__(self, rule: _Optional[_Union[BudgetRule, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class DeleteBudgetRequest(_message.Message):
    __slots__ = ("scope", "window", "unit")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    scope: _budget_pb2.Scope
    window: _budget_pb2.Window
    unit: _budget_pb2.Unit
    def __init__(self, scope: _Optional[_Union[_budget_pb2.Scope, _Mapping]] = ..., window: _Optional[_Union[_budget_pb2.Window, str]] = ..., unit: _Optional[_Union[_budget_pb2.Unit, str]] = ...) -> None: ...

class DeleteBudgetResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class ListBudgetsRequest(_message.Message):
    __slots__ = ("org",)
    ORG_FIELD_NUMBER: _ClassVar[int]
    org: str
    def __init__(self, org: _Optional[str] = ...) -> None: ...

class ListBudgetsResponse(_message.Message):
    __slots__ = ("rules", "settings")
    RULES_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[BudgetRule]
    settings: OrgSettings
    def __init__(self, rules: _Optional[_Iterable[_Union[BudgetRule, _Mapping]]] = ..., settings: _Optional[_Union[OrgSettings, _Mapping]] = ...) -> None: ...

class OrgSettings(_message.Message):
    __slots__ = ("org", "time_zone", "expiry_policy")
    ORG_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_POLICY_FIELD_NUMBER: _ClassVar[int]
    org: str
    time_zone: str
    expiry_policy: _budget_pb2.ExpiryPolicy
    def __init__(self, org: _Optional[str] = ..., time_zone: _Optional[str] = ..., expiry_policy: _Optional[_Union[_budget_pb2.ExpiryPolicy, str]] = ...) -> None: ...

class SetOrgSettingsRequest(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: OrgSettings
    def __init__(self, settings: _Optional[_Union[OrgSettings, _Mapping]] = ...) -> None: ...

class SetOrgSettingsResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: OrgSettings
    def __init__(self, settings: _Optional[_Union[OrgSettings, _Mapping]] = ...) -> None: ...

class GetOrgSettingsRequest(_message.Message):
    __slots__ = ("org",)
    ORG_FIELD_NUMBER: _ClassVar[int]
    org: str
    def __init__(self, org: _Optional[str] = ...) -> None: ...

class GetOrgSettingsResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: OrgSettings
    def __init__(self, settings: _Optional[_Union[OrgSettings, _Mapping]] = ...) -> None: ...

class Prices(_message.Message):
    __slots__ = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_5M_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_1H_FIELD_NUMBER: _ClassVar[int]
    CACHE_READ_FIELD_NUMBER: _ClassVar[int]
    input: int
    output: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int
    def __init__(self, input: _Optional[int] = ..., output: _Optional[int] = ..., cache_write_5m: _Optional[int] = ..., cache_write_1h: _Optional[int] = ..., cache_read: _Optional[int] = ...) -> None: ...

class PriceTier(_message.Message):
    __slots__ = ("above_prompt_tokens", "prices")
    ABOVE_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    above_prompt_tokens: int
    prices: Prices
    def __init__(self, above_prompt_tokens: _Optional[int] = ..., prices: _Optional[_Union[Prices, _Mapping]] = ...) -> None: ...

class PriceVersion(_message.Message):
    __slots__ = ("effective_from", "prices", "tiers")
    EFFECTIVE_FROM_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    effective_from: str
    prices: Prices
    tiers: _containers.RepeatedCompositeFieldContainer[PriceTier]
    def __init__(self, effective_from: _Optional[str] = ..., prices: _Optional[_Union[Prices, _Mapping]] = ..., tiers: _Optional[_Iterable[_Union[PriceTier, _Mapping]]] = ...) -> None: ...

class ModelPricing(_message.Message):
    __slots__ = ("model", "aliases", "max_output_tokens", "batch_discount_percent", "versions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BATCH_DISCOUNT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    max_output_tokens: int
    batch_discount_percent: int
    versions: _containers.RepeatedCompositeFieldContainer[PriceVersion]
    def __init__(self, model: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., max_output_tokens: _Optional[int] = ..., batch_discount_percent: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[PriceVersion, _Mapping]]] = ...) -> None: ...

class SetPricingRequest(_message.Message):
    __slots__ = ("pricing",)
    PRICING_FIELD_NUMBER: _ClassVar[int]
    pricing: ModelPricing
    def __init__(self, pricing: _Optional[_Union[ModelPricing, _Mapping]] = ...) -> None: ...

class SetPricingResponse(_message.Message):
    __slots__ = ("pricing",)
    PRICING_FIELD_NUMBER: _ClassVar[int]
    pricing: ModelPricing
    def __init__(self, pricing: _Optional[_Union[ModelPricing, _Mapping]] = ...) -> None: ...

class GetPricingRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class GetPricingResponse(_message.Message):
    __slots__ = ("pricing",)
    PRICING_FIELD_NUMBER: _ClassVar[int]
    pricing: _containers.RepeatedCompositeFieldContainer[ModelPricing]
    def __init__(self, pricing: _Optional[_Iterable[_Union[ModelPricing, _Mapping]]] = ...) -> None: ...
