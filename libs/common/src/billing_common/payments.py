"""Why a payment failed, in the words every service shares (gateway-adapter decides them; recurring
and dunning act on them). The members match the contracts' `FailureType` and `DeclineKind` by name."""

from __future__ import annotations

from enum import StrEnum


class MethodType(StrEnum):
    """How a customer pays; gateway-adapter routes each merchant's methods to a gateway."""

    CARD = "card"
    ACH = "ach"
    STRIPE = "stripe"


class FailureType(StrEnum):
    UNSPECIFIED = "unspecified"  # the message did not say
    NONE = "none"  # the payment did not fail
    CARDHOLDER = "cardholder"
    MERCHANT = "merchant"
    GATEWAY_UNREACHABLE = "gateway_unreachable"
    UNKNOWN_OUTCOME = "unknown_outcome"


class DeclineKind(StrEnum):
    UNSPECIFIED = "unspecified"
    NONE = "none"
    SOFT = "soft"
    HARD = "hard"
