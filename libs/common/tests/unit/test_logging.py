import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from billing_common import context
from billing_common.logging import JsonFormatter


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
