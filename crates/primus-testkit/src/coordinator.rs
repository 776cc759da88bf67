//! primusd process groups.
