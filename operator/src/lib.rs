//! The ragpool operator: scales `ragpool-executor` Deployments on the depth and wait of the
//! queues each `RagWorkerPool` serves, without killing a task in flight.

pub mod crd;
pub mod observe;
pub mod policy;

#[cfg(test)]
mod fixtures;
