//! W3C trace context (`traceparent`, `tracestate`) as it arrives on a record or a request and
//! becomes the parent of the consumer's span. A context that is accepted comes from a W3C-shaped
//! `traceparent`, names the trace id `trace_id_of` reads, and survives extract → inject →
//! extract unchanged.
#![no_main]

use fintech_platform::telemetry::{TraceHeaders, is_valid_traceparent, trace_id_of};
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::TraceContextExt;

// Input: the `traceparent`, then (after a newline, when there is one) the `tracestate`.
fuzz_target!(|text: &str| {
    let (traceparent, tracestate) = match text.split_once('\n') {
        Some((traceparent, tracestate)) => (traceparent, Some(tracestate)),
        None => (text, None),
    };
    let headers = TraceHeaders {
        traceparent: Some(traceparent.to_owned()),
        tracestate: tracestate.map(str::to_owned),
    };
    let context = headers.to_context();
    let span = context.span().span_context().clone();
    if !span.is_valid() {
        return;
    }
    let traceparent = headers
        .traceparent
        .as_deref()
        .expect("a valid context came from a traceparent");
    assert!(is_valid_traceparent(traceparent), "{traceparent:?} is not W3C-shaped");
    let trace_id = trace_id_of(traceparent).expect("an accepted traceparent has a trace id");
    assert_eq!(trace_id.to_ascii_lowercase(), span.trace_id().to_string());

    // Sent on (an outbox row, a produced record): the same trace, span and flags.
    let sent = TraceHeaders::of_context(&context);
    assert_eq!(sent.trace_id(), Some(span.trace_id().to_string().as_str()));
    let again = sent.to_context();
    let again = again.span().span_context().clone();
    assert_eq!(again.trace_id(), span.trace_id());
    assert_eq!(again.span_id(), span.span_id());
    assert_eq!(again.trace_flags(), span.trace_flags());
    assert_eq!(again.trace_state().header(), span.trace_state().header());
    assert_eq!(TraceHeaders::of_context(&sent.to_context()), sent);
});
