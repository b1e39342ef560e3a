//! ragpool executor.

pub mod backend;
