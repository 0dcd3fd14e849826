import json
import logging
import sys

from opentelemetry.sdk.trace import TracerProvider

from billing_common import context
from billing_common.logging import JsonFormatter, RedactCardNumbers


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("billing.test").makeRecord(
        "billing.test", logging.INFO, __file__, 1, message, (), None
    )
    record.__dict__.update(extra)
    return record


def test_log_line_is_one_json_object_with_trace_span_and_correlation_ids() -> None:
    formatter = JsonFormatter("quota")
    tracer = TracerProvider().get_tracer("test")
    token = context.correlation_id.set("corr-123")
    try:
        with tracer.start_as_current_span("CheckQuota") as span:
            line = formatter.format(_record("quota checked", tenant_id="acme"))
            expected_trace = format(span.get_span_context().trace_id, "032x")
            expected_span = format(span.get_span_context().span_id, "016x")
    finally:
        context.correlation_id.reset(token)

    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "quota checked"
    assert entry["service"] == "quota"
    assert entry["trace_id"] == expected_trace
    assert entry["span_id"] == expected_span
    assert entry["correlation_id"] == "corr-123"
    assert entry["tenant_id"] == "acme"


def test_outside_a_span_no_trace_ids_are_invented() -> None:
    entry = json.loads(JsonFormatter("tier").format(_record("scan queued")))
    assert "trace_id" not in entry
    assert "correlation_id" not in entry


def test_the_redaction_filter_removes_card_numbers_from_messages_extra_fields_and_exceptions() -> None:
    record = _record("charging %s", token="tok_4242424242424242")
    record.args = ("4242 4242 4242 4242",)
    try:
        raise ValueError("bad token x4111111111111111")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert RedactCardNumbers().filter(record)
    line = JsonFormatter("gateway-adapter").format(record)

    for digits in ("4242424242424242", "4111111111111111", "4242 4242 4242 4242"):
        assert digits not in line
    entry = json.loads(line)
    assert entry["message"] == "charging [card number removed]"
    assert entry["token"] == "tok_[card number removed]"
    assert "bad token x[card number removed]" in entry["exception"]
