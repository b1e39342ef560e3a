//! End-to-end tests of the API: a real `redis-server` per test and the server in-process on
//! 127.0.0.1:0, driven over HTTP; attacks on the process itself (its memory, its budget) run
//! against the real `ragpool-api` binary (`process.rs`).

mod auth;
mod bad_input;
mod batch;
mod budget;
mod cross_site;
mod crowding;
mod dashboard;
mod endpoints;
mod faults;
mod hostile;
mod partitions;
mod payloads;
mod process;
mod replicated;
mod slow_redis;
mod support;
mod wait_events;
