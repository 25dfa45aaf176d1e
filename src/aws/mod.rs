//! AWS request signing for the export side: [`credentials`] (aws-config's credential chain
//! behind a cache that refreshes ahead of expiry, and a description of which source a
//! destination uses, for `check` and error messages) and [`sigv4`] (SigV4 headers for the exact
//! bytes of one request).
//!
//! Invariants: nothing here contacts AWS until a request is signed (building a destination and
//! `check` read only the environment and the AWS config files); credentials are never logged or
//! printed; a credential failure is an error string saying what to run, which the export worker
//! turns into a held, slowly retried batch — never a drop. This module knows nothing of OTLP,
//! the spool or the worker.

pub mod credentials;
pub mod sigv4;
