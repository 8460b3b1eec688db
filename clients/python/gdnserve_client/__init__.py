"""Python client for gdnserve's gRPC API; see client.py and clients/README.md."""

from .client import (
    CancelledError,
    Client,
    Completion,
    DeadlineExceededError,
    GdnserveError,
    InvalidArgumentError,
    ResourceExhaustedError,
    SampleResult,
    TextStream,
    UnavailableError,
    build_request,
    error_from_rpc,
    finish_reason_name,
    pb,
    pb_grpc,
)

__all__ = [
    "CancelledError",
    "Client",
    "Completion",
    "DeadlineExceededError",
    "GdnserveError",
    "InvalidArgumentError",
    "ResourceExhaustedError",
    "SampleResult",
    "TextStream",
    "UnavailableError",
    "build_request",
    "error_from_rpc",
    "finish_reason_name",
    "pb",
    "pb_grpc",
]
