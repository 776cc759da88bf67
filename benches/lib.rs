//! Benchmarks are binaries under benches/; see README.
