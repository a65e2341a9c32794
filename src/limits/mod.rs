//! Limits enforced before any upstream work starts: per-route rate limits and in-flight caps,
//! and the process-wide connection cap.

pub mod client_deadlines;
pub mod concurrency;
pub mod connections;
pub mod enforce;
pub mod rate;
