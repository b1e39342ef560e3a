//! End-to-end tests of the API: a real `redis-server` per test and the server in-process on
//! 127.0.0.1:0, driven over HTTP.

mod auth;
mod bad_input;
mod batch;
mod dashboard;
mod endpoints;
mod faults;
mod hostile;
mod partitions;
mod payloads;
mod replicated;
mod support;
mod wait_events;
