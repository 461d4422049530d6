import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Window(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WINDOW_UNSPECIFIED: _ClassVar[Window]
    WINDOW_DAY: _ClassVar[Window]
    WINDOW_MONTH: _ClassVar[Window]

class Unit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNIT_UNSPECIFIED: _ClassVar[Unit]
    UNIT_TOKENS: _ClassVar[Unit]
    UNIT_COST_MICROS: _ClassVar[Unit]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_HARD: _ClassVar[Mode]
    MODE_SOFT: _ClassVar[Mode]
    MODE_SHADOW: _ClassVar[Mode]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOWED: _ClassVar[Decision]
    DECISION_DENIED: _ClassVar[Decision]

class ExpiryPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPIRY_POLICY_UNSPECIFIED: _ClassVar[ExpiryPolicy]
    EXPIRY_POLICY_KEEP: _ClassVar[ExpiryPolicy]
    EXPIRY_POLICY_RELEASE: _ClassVar[ExpiryPolicy]

class ReservationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVATION_STATE_UNSPECIFIED: _ClassVar[ReservationState]
    RESERVATION_STATE_HELD: _ClassVar[ReservationState]
    RESERVATION_STATE_RECONCILED: _ClassVar[ReservationState]
    RESERVATION_STATE_RELEASED: _ClassVar[ReservationState]
    RESERVATION_STATE_EXPIRED: _ClassVar[ReservationState]
WINDOW_UNSPECIFIED: Window
WINDOW_DAY: Window
WINDOW_MONTH: Window
UNIT_UNSPECIFIED: Unit
UNIT_TOKENS: Unit
UNIT_COST_MICROS: Unit
MODE_UNSPECIFIED: Mode
MODE_HARD: Mode
MODE_SOFT: Mode
MODE_SHADOW: Mode
DECISION_UNSPECIFIED: Decision
DECISION_ALLOWED: Decision
DECISION_DENIED: Decision
EXPIRY_POLICY_UNSPECIFIED: ExpiryPolicy
EXPIRY_POLICY_KEEP: ExpiryPolicy
EXPIRY_POLICY_RELEASE: ExpiryPolicy
RESERVATION_STATE_UNSPECIFIED: ReservationState
RESERVATION_STATE_HELD: ReservationState
RESERVATION_STATE_RECONCILED: ReservationState
RESERVATION_STATE_RELEASED: ReservationState
RESERVATION_STATE_EXPIRED: ReservationState

class Scope(_message.Message):
    __slots__ = ("org", "team", "feature")
    ORG_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    org: str
    team: str
    feature: str
    def __init__(self, org: _Optional[str] = ..., team: _Optional[str] = ..., feature: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_CREATION_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_READ_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_5M_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_1H_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    ephemeral_5m_input_tokens: int
    ephemeral_1h_input_tokens: int
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cache_creation_input_tokens: _Optional[int] = ..., cache_read_input_tokens: _Optional[int] = ..., ephemeral_5m_input_tokens: _Optional[int] = ..., ephemeral_1h_input_tokens: _Optional[int] = ...) -> None: ...

class Amount(_message.Message):
    __slots__ = ("tokens", "cost_micros")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    cost_micros: int
    def __init__(self, tokens: _Optional[int] = ..., cost_micros: _Optional[int] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("token_estimate", "explicit")
    TOKEN_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_FIELD_NUMBER: _ClassVar[int]
    token_estimate: TokenEstimate
    explicit: ExplicitAmount
    def __init__(self, token_estimate: _Optional[_Union[TokenEstimate, _Mapping]] = ..., explicit: _Optional[_Union[ExplicitAmount, _Mapping]] = ...) -> None: ...

class TokenEstimate(_message.Message):
    __slots__ = ("input_tokens", "max_output_tokens")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    max_output_tokens: int
    def __init__(self, input_tokens: _Optional[int] = ..., max_output_tokens: _Optional[int] = ...) -> None: ...

class ExplicitAmount(_message.Message):
    __slots__ = ("tokens", "cost_micros")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    cost_micros: int
    def __init__(self, tokens: _Optional[int] = ..., cost_micros: _Optional[int] = ...) -> None: ...

class Remaining(_message.Message):
    __slots__ = ("scope", "window", "unit", "mode", "limit", "remaining")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    window: Window
    unit: Unit
    mode: Mode
    limit: int
    remaining: int
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., window: _Optional[_Union[Window, str]] = ..., unit: _Optional[_Union[Unit, str]] = ..., mode: _Optional[_Union[Mode, str]] = ..., limit: _Optional[int] = ..., remaining: _Optional[int] = ...) -> None: ...

class Denial(_message.Message):
    __slots__ = ("scope", "window", "unit", "limit", "used", "reserved", "requested", "model")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    window: Window
    unit: Unit
    limit: int
    used: int
    reserved: int
    requested: int
    model: str
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., window: _Optional[_Union[Window, str]] = ..., unit: _Optional[_Union[Unit, str]] = ..., limit: _Optional[int] = ..., used: _Optional[int] = ..., reserved: _Optional[int] = ..., requested: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class RuleCrossing(_message.Message):
    __slots__ = ("scope", "window", "unit", "mode", "limit", "used", "reserved", "requested")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    window: Window
    unit: Unit
    mode: Mode
    limit: int
    used: int
    reserved: int
    requested: int
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., window: _Optional[_Union[Window, str]] = ..., unit: _Optional[_Union[Unit, str]] = ..., mode: _Optional[_Union[Mode, str]] = ..., limit: _Optional[int] = ..., used: _Optional[int] = ..., reserved: _Optional[int] = ..., requested: _Optional[int] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("id", "scope", "window", "unit", "mode", "threshold_percent", "limit", "consumed", "window_id", "fired_at", "request_id", "kind")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    FIRED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    id: str
    scope: Scope
    window: Window
    unit: Unit
    mode: Mode
    threshold_percent: int
    limit: int
    consumed: int
    window_id: str
    fired_at: _timestamp_pb2.Timestamp
    request_id: str
    kind: str
    def __init__(self, id: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., window: _Optional[_Union[Window, str]] = ..., unit: _Optional[_Union[Unit, str]] = ..., mode: _Optional[_Union[Mode, str]] = ..., threshold_percent: _Optional[int] = ..., limit: _Optional[int] = ..., consumed: _Optional[int] = ..., window_id: _Optional[str] = ..., fired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("request_id", "scope", "model", "estimate", "ttl_seconds", "fallback_models", "batch")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_MODELS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    scope: Scope
    model: str
    estimate: Estimate
    ttl_seconds: int
    fallback_models: _containers.RepeatedScalarFieldContainer[str]
    batch: bool
    def __init__(self, request_id: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., model: _Optional[str] = ..., estimate: _Optional[_Union[Estimate, _Mapping]] = ..., ttl_seconds: _Optional[int] = ..., fallback_models: _Optional[_Iterable[str]] = ..., batch: _Optional[bool] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("decision", "reservation_id", "model", "reserved", "remaining", "denial", "expires_at", "alerts", "crossings")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    DENIAL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    CROSSINGS_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    reservation_id: str
    model: str
    reserved: Amount
    remaining: _containers.RepeatedCompositeFieldContainer[Remaining]
    denial: Denial
    expires_at: _timestamp_pb2.Timestamp
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    crossings: _containers.RepeatedCompositeFieldContainer[RuleCrossing]
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., reservation_id: _Optional[str] = ..., model: _Optional[str] = ..., reserved: _Optional[_Union[Amount, _Mapping]] = ..., remaining: _Optional[_Iterable[_Union[Remaining, _Mapping]]] = ..., denial: _Optional[_Union[Denial, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., crossings: _Optional[_Iterable[_Union[RuleCrossing, _Mapping]]] = ...) -> None: ...

class ReconcileRequest(_message.Message):
    __slots__ = ("reservation_id", "usage", "model", "cost_micros")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    usage: Usage
    model: str
    cost_micros: int
    def __init__(self, reservation_id: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., model: _Optional[str] = ..., cost_micros: _Optional[int] = ...) -> None: ...

class ReconcileResponse(_message.Message):
    __slots__ = ("state", "reserved", "actual", "late", "alerts")
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    state: ReservationState
    reserved: Amount
    actual: Amount
    late: bool
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, state: _Optional[_Union[ReservationState, str]] = ..., reserved: _Optional[_Union[Amount, _Mapping]] = ..., actual: _Optional[_Union[Amount, _Mapping]] = ..., late: _Optional[bool] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("state", "released", "late")
    STATE_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    state: ReservationState
    released: Amount
    late: bool
    def __init__(self, state: _Optional[_Union[ReservationState, str]] = ..., released: _Optional[_Union[Amount, _Mapping]] = ..., late: _Optional[bool] = ...) -> None: ...

class RecordRequest(_message.Message):
    __slots__ = ("request_id", "scope", "model", "usage", "cost_micros", "batch", "occurred_at")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    scope: Scope
    model: str
    usage: Usage
    cost_micros: int
    batch: bool
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., model: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., cost_micros: _Optional[int] = ..., batch: _Optional[bool] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordResponse(_message.Message):
    __slots__ = ("recorded", "alerts")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    recorded: Amount
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, recorded: _Optional[_Union[Amount, _Mapping]] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ("scope",)
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ...) -> None: ...

class WindowStatus(_message.Message):
    __slots__ = ("window", "unit", "has_limit", "mode", "limit", "used", "reserved", "remaining", "percent", "window_id", "resets_at", "projected")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    HAS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    RESETS_AT_FIELD_NUMBER: _ClassVar[int]
    PROJECTED_FIELD_NUMBER: _ClassVar[int]
    window: Window
    unit: Unit
    has_limit: bool
    mode: Mode
    limit: int
    used: int
    reserved: int
    remaining: int
    percent: int
    window_id: str
    resets_at: _timestamp_pb2.Timestamp
    projected: int
    def __init__(self, window: _Optional[_Union[Window, str]] = ..., unit: _Optional[_Union[Unit, str]] = ..., has_limit: _Optional[bool] = ..., mode: _Optional[_Union[Mode, str]] = ..., limit: _Optional[int] = ..., used: _Optional[int] = ..., reserved: _Optional[int] = ..., remaining: _Optional[int] = ..., percent: _Optional[int] = ..., window_id: _Optional[str] = ..., resets_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., projected: _Optional[int] = ...) -> None: ...

class GetBudgetResponse(_message.Message):
    __slots__ = ("scope", "windows", "time_zone")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    windows: _containers.RepeatedCompositeFieldContainer[WindowStatus]
    time_zone: str
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., windows: _Optional[_Iterable[_Union[WindowStatus, _Mapping]]] = ..., time_zone: _Optional[str] = ...) -> None: ...

class ReserveBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ReserveRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ReserveRequest, _Mapping]]] = ...) -> None: ...

class ReserveBatchResult(_message.Message):
    __slots__ = ("response", "error_code", "error_message")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    response: ReserveResponse
    error_code: int
    error_message: str
    def __init__(self, response: _Optional[_Union[ReserveResponse, _Mapping]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class ReserveBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ReserveBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ReserveBatchResult, _Mapping]]] = ...) -> None: ...
