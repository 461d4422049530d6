from budgetd_client._proto.budget.v1 import budget_pb2 as _budget_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Period(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PERIOD_UNSPECIFIED: _ClassVar[Period]
    PERIOD_DAY: _ClassVar[Period]
    PERIOD_MONTH: _ClassVar[Period]

class GroupBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUP_BY_UNSPECIFIED: _ClassVar[GroupBy]
    GROUP_BY_TEAM: _ClassVar[GroupBy]
    GROUP_BY_FEATURE: _ClassVar[GroupBy]
    GROUP_BY_MODEL: _ClassVar[GroupBy]
    GROUP_BY_SCOPE_MODEL: _ClassVar[GroupBy]
PERIOD_UNSPECIFIED: Period
PERIOD_DAY: Period
PERIOD_MONTH: Period
GROUP_BY_UNSPECIFIED: GroupBy
GROUP_BY_TEAM: GroupBy
GROUP_BY_FEATURE: GroupBy
GROUP_BY_MODEL: GroupBy
GROUP_BY_SCOPE_MODEL: GroupBy

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

class GetUsageReportRequest(_message.Message):
    __slots__ = ("org", "period", "period_id", "group_by")
    ORG_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    org: str
    period: Period
    period_id: str
    group_by: GroupBy
    def __init__(self, org: _Optional[str] = ..., period: _Optional[_Union[Period, str]] = ..., period_id: _Optional[str] = ..., group_by: _Optional[_Union[GroupBy, str]] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ("group", "input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens", "cost_micros", "requests", "denials", "shadow_denials")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_READ_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DENIALS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_DENIALS_FIELD_NUMBER: _ClassVar[int]
    group: str
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    cost_micros: int
    requests: int
    denials: int
    shadow_denials: int
    def __init__(self, group: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cache_write_tokens: _Optional[int] = ..., cache_read_tokens: _Optional[int] = ..., cost_micros: _Optional[int] = ..., requests: _Optional[int] = ..., denials: _Optional[int] = ..., shadow_denials: _Optional[int] = ...) -> None: ...

class GetUsageReportResponse(_message.Message):
    __slots__ = ("org", "period", "period_id", "group_by", "rows", "total")
    ORG_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    org: str
    period: Period
    period_id: str
    group_by: GroupBy
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    total: UsageRow
    def __init__(self, org: _Optional[str] = ..., period: _Optional[_Union[Period, str]] = ..., period_id: _Optional[str] = ..., group_by: _Optional[_Union[GroupBy, str]] = ..., rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ..., total: _Optional[_Union[UsageRow, _Mapping]] = ...) -> None: ...

class WatchAlertsRequest(_message.Message):
    __slots__ = ("org", "after_id")
    ORG_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    org: str
    after_id: str
    def __init__(self, org: _Optional[str] = ..., after_id: _Optional[str] = ...) -> None: ...

class WatchAlertsResponse(_message.Message):
    __slots__ = ("alert",)
    ALERT_FIELD_NUMBER: _ClassVar[int]
    alert: _budget_pb2.Alert
    def __init__(self, alert: _Optional[_Union[_budget_pb2.Alert, _Mapping]] = ...) -> None: ...
