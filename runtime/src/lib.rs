//! What every ragpool component shares besides the queue protocol, which is
//! `ragpool-queue`'s alone:
//!
//! - [`http_server`]: the listener every component serves its router through, with the
//!   timeouts and connection limits a hostile client needs.
//! - [`args`]: the command-line arguments every process of a key prefix reads the same way
//!   (`--key-prefix`, `--partitions`, `--durability`).
//! - [`image_input`]: the rules for a task's image, checked by the API at submission and
//!   again by the executor before it decodes or fetches the image.
//! - [`process`]: logs, the async runtime and exit status, and the stop signal.
//! - [`telemetry`]: traces over OTLP and the W3C trace context of requests and tasks.

pub mod args;
pub mod http_server;
pub mod image_input;
pub mod process;
pub mod telemetry;

pub use args::{DurabilityArgs, KeyPrefixArgs, PartitionArgs};
