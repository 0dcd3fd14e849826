"""Reading a refused call as a caller would: the field violations in its error details."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """field -> reason, from the BadRequest detail of an INVALID_ARGUMENT (empty if it has none)."""
    status = rpc_status.from_call(error)
    found: dict[str, str] = {}
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update({v.field: v.description for v in bad.field_violations})
    return found
