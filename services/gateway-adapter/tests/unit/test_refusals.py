"""ChargeBatch's per-charge refusals, as callers read them back into the status Charge answers with."""

from __future__ import annotations

from datetime import timedelta

import pytest

from billing_common.errors import BillingError, FailedPrecondition, InvalidArgument, Unavailable
from billing_common.grpc_server import status_code_for
from billing_common.protos import CHARGE_REFUSAL_CODES
from gateway_adapter.app.payments import STILL_IN_PROGRESS, BackPressure, ChargeAnswer
from gateway_adapter.entrypoints.servicer import _charge_result


@pytest.mark.parametrize(
    "error",
    [
        InvalidArgument.of("amount", "must be positive"),
        FailedPrecondition("the key was used for another charge"),
        Unavailable(STILL_IN_PROGRESS),
        BackPressure(timedelta(seconds=2)),
    ],
)
def test_a_refused_charge_in_a_batch_reads_back_as_the_status_charge_answers_the_same_error_with(
    error: BillingError,
) -> None:
    result = _charge_result("key-1", ChargeAnswer(payment=None, error=error))
    assert CHARGE_REFUSAL_CODES[result.refusal] is status_code_for(error)
