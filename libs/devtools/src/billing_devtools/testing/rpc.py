"""Calling as a caller would: the field violations of a refused call, every page of a listing."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from billing_common.paging import DEFAULT_PAGE_SIZE

MAX_PAGES_WALKED = 10_000


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """field -> reason, from the BadRequest detail of an INVALID_ARGUMENT (empty if it has none)."""
    status = rpc_status.from_call(error)
    found: dict[str, str] = {}
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update({v.field: v.description for v in bad.field_violations})
    return found


async def every_page(call: Any, request: Any, items: str, sizes: Sequence[int]) -> list[Any]:
    """Walk a List RPC as a caller would, page by page with `sizes` (cycled): the items of all pages."""
    listed: list[Any] = []
    request.page_token = ""
    for page, size in enumerate(itertools.cycle(sizes)):
        assert page < MAX_PAGES_WALKED, "the listing never ended"
        request.page_size = size
        reply = await call(request)
        assert len(getattr(reply, items)) <= (size or DEFAULT_PAGE_SIZE)
        listed += getattr(reply, items)
        if not reply.next_page_token:
            return listed
        request.page_token = reply.next_page_token
    raise AssertionError("unreachable")
