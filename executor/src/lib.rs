//! ragpool executor.
