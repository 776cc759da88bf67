//! Shared helpers for the integration tests live in primus-testkit.
