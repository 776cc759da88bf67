//! The agents' and the failover engine's own log lines in a run's trace. The simulated
//! agents run the real agent loop and the coordinators the real engine, which log through
//! `tracing`; this layer takes their events (target `primus_agent` from INFO, with the
//! `agent` span the simulation puts around each agent naming its server; the engine's
//! `primus_server::failover` from WARN) and hands each, formatted, to the run's sink on
//! this thread. Every other target is disabled at its call site and costs nothing.

use std::cell::RefCell;
use std::fmt::Write as _;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type Sink = Box<dyn Fn(String)>;

thread_local! {
    static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
}

/// Run `f` with the agents' log lines going to the sink set by [`set_sink`] (on this
/// thread, for the run's current-thread runtime).
pub fn with_agent_log<T>(f: impl FnOnce() -> T) -> T {
    let filter = Targets::new()
        .with_target("primus_agent", LevelFilter::INFO)
        .with_target("primus_sim::agent", LevelFilter::INFO)
        .with_target("primus_server::failover", LevelFilter::WARN);
    let subscriber = tracing_subscriber::registry().with(AgentLog.with_filter(filter));
    tracing::subscriber::with_default(subscriber, f)
}

/// Where this thread's agent log lines go (`None`: nowhere).
pub fn set_sink(sink: Option<Sink>) {
    SINK.with(|s| *s.borrow_mut() = sink);
}

struct AgentLog;

/// A span's fields, formatted once when it is created.
struct SpanFields(String);

#[derive(Default)]
struct Format {
    message: String,
    fields: String,
}

impl Visit for Format {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for AgentLog {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Format::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(f.fields.trim_start().to_string()));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    let _ = write!(line, "{}[{}] ", span.name(), f.0);
                }
            }
        }
        if line.is_empty() {
            // The engine's lines name no coordinator (its tasks carry no span).
            let _ = write!(line, "{} ", event.metadata().target());
        }
        let mut f = Format::default();
        event.record(&mut f);
        let _ = write!(line, "{} {}", event.metadata().level(), f.message);
        line.push_str(&f.fields);
        SINK.with(|s| {
            if let Some(sink) = s.borrow().as_ref() {
                sink(line);
            }
        });
    }
}
