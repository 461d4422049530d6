"""Channel options and call policy shared by both clients."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc


@dataclass(frozen=True, slots=True)
class CallPolicy:
    # Deadline of one attempt, and of all attempts together.
    timeout_s: float = 1.0
    total_timeout_s: float = 3.0
    # Retries of UNAVAILABLE / DEADLINE_EXCEEDED, with the same request.
    retries: int = 2
    backoff_s: float = 0.05


def credentials(root_certificates: bytes | None, private_key: bytes | None,
                certificate_chain: bytes | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


def metadata(token: str | None) -> Sequence[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),) if token else ()


CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # Retries are ours (with request_id reuse), not the channel's.
    ("grpc.enable_retries", 0),
]
