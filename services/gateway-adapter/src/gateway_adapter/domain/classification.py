"""Failure classification as data: one table per gateway from its own codes to ours.

Every gateway speaks its own dialect ("do_not_honor", "05", "R01", HTTP 597). Callers (recurring,
dunning) decide on our normalized fields alone, so a new gateway means a new table, not new
branches in the callers. An unknown code maps to a hard, non-retryable decline: we would rather
ask a human than retry blindly against a code we do not understand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from billing_common.payments import DeclineKind, FailureType


@dataclass(frozen=True)
class Classification:
    normalized_code: str
    failure_type: FailureType
    decline_kind: DeclineKind
    retryable: bool
    # Counts towards the merchant's circuit breaker: the gateway could not be reached or did not answer.
    counts_as_outage: bool = False

    @property
    def is_decline(self) -> bool:
        return self.failure_type in (FailureType.CARDHOLDER, FailureType.MERCHANT)


def _soft(code: str) -> Classification:
    return Classification(code, FailureType.CARDHOLDER, DeclineKind.SOFT, retryable=True)


def _hard(code: str) -> Classification:
    return Classification(code, FailureType.CARDHOLDER, DeclineKind.HARD, retryable=False)


def _merchant(code: str) -> Classification:
    return Classification(code, FailureType.MERCHANT, DeclineKind.NONE, retryable=False)


APPROVED = Classification("approved", FailureType.NONE, DeclineKind.NONE, retryable=False)
UNREACHABLE = Classification(
    "gateway_unreachable",
    FailureType.GATEWAY_UNREACHABLE,
    DeclineKind.NONE,
    retryable=True,
    counts_as_outage=True,
)
CIRCUIT_OPEN = Classification(
    "circuit_open", FailureType.GATEWAY_UNREACHABLE, DeclineKind.NONE, retryable=True
)
RATE_LIMITED = Classification(
    "rate_limited", FailureType.GATEWAY_UNREACHABLE, DeclineKind.NONE, retryable=True
)
# Our own pacer found no turn under the gateway's rate limit in time: the gateway never saw it.
NO_TURN = Classification(
    "no_turn_under_rate_limit", FailureType.GATEWAY_UNREACHABLE, DeclineKind.NONE, retryable=True
)
OUTCOME_UNKNOWN = Classification(
    "outcome_unknown", FailureType.UNKNOWN_OUTCOME, DeclineKind.NONE, retryable=False, counts_as_outage=True
)
NOT_RECEIVED = Classification(
    "not_received_by_gateway", FailureType.GATEWAY_UNREACHABLE, DeclineKind.NONE, retryable=True
)
UNMAPPED = _hard("unmapped_decline")

SANDBOX: Mapping[str, Classification] = {
    "approved": APPROVED,
    "insufficient_funds": _soft("insufficient_funds"),
    "do_not_honor": _soft("do_not_honor"),
    "expired_card": _hard("expired_card"),
    "stolen_card": _hard("stolen_card"),
    "lost_card": _hard("lost_card"),
    "invalid_merchant_credentials": _merchant("invalid_merchant_credentials"),
    "597": UNREACHABLE,
    "429": RATE_LIMITED,
    "timeout": OUTCOME_UNKNOWN,
    # NACHA return codes for ACH debits.
    "R01": _soft("insufficient_funds"),
    "R02": _hard("account_closed"),
    "R03": _hard("no_account"),
    "R09": _soft("uncollected_funds"),
    "R29": _hard("debit_not_authorized"),
}

# Stripe's decline codes (`decline_code`) and error codes (`code`), as documented by Stripe.
STRIPE: Mapping[str, Classification] = {
    "succeeded": APPROVED,
    "insufficient_funds": _soft("insufficient_funds"),
    "do_not_honor": _soft("do_not_honor"),
    "generic_decline": _soft("generic_decline"),
    "card_velocity_exceeded": _soft("card_velocity_exceeded"),
    "try_again_later": _soft("try_again_later"),
    "processing_error": _soft("processing_error"),
    "issuer_not_available": _soft("issuer_not_available"),
    "expired_card": _hard("expired_card"),
    "stolen_card": _hard("stolen_card"),
    "lost_card": _hard("lost_card"),
    "pickup_card": _hard("pickup_card"),
    "fraudulent": _hard("fraudulent"),
    "incorrect_cvc": _hard("incorrect_cvc"),
    "incorrect_number": _hard("incorrect_number"),
    "authentication_required": _hard("authentication_required"),
    "card_not_supported": _hard("card_not_supported"),
    "api_key_expired": _merchant("invalid_merchant_credentials"),
    "authentication_error": _merchant("invalid_merchant_credentials"),
    "account_invalid": _merchant("invalid_merchant_credentials"),
    "rate_limit": RATE_LIMITED,
    "api_connection_error": UNREACHABLE,
    "timeout": OUTCOME_UNKNOWN,
}

TABLES: Mapping[str, Mapping[str, Classification]] = {
    "sandbox-card": SANDBOX,
    "sandbox-ach": SANDBOX,
    "stripe": STRIPE,
}


def classify(gateway: str, code: str) -> tuple[Classification, bool]:
    """Our reading of a gateway code, and whether the code was known (unknown ones get logged)."""
    known = TABLES.get(gateway, {}).get(code)
    return (known, True) if known is not None else (UNMAPPED, False)
