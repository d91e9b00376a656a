//! Human-readable views of a job result: the self-contained HTML replay report.

pub mod html;
