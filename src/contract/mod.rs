//! The wire formats other programs depend on, each with its published schema: the job on the
//! queue ([`job`], `schemas/job.schema.json`), the progress on the job row ([`progress`]) and the
//! result ([`result`], `schemas/result.schema.json`). Changing one is changing a contract.

pub mod job;
pub mod progress;
pub mod result;
