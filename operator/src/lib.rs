//! The ragpool operator: scales `ragpool-executor` Deployments on the depth and wait of the
//! queues each `RagWorkerPool` serves, without killing a task in flight.
//!
//! - [`crd`]: the `RagWorkerPool` resource.
//! - [`observe`]: what the queues look like ([`observe::Observer`], [`observe::Observation`]);
//!   [`redis_observer`] reads it from Redis.
//! - [`policy`]: the pure scaling policy, [`policy::desired_replicas`].
//! - [`resources`]: the Deployment and ConfigMap a pool owns.
//! - [`deletion_cost`]: which pods a scale-down removes.
//! - [`controller`]: the reconcile loop.
//! - [`leader`]: leader election with a Lease.
//! - [`metrics`], [`server`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`cli`]: the command line of `ragpool-operator` (and `ragpool operator`).

pub mod cli;
pub mod controller;
pub mod crd;
pub mod deletion_cost;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod policy;
pub mod redis_observer;
pub mod redis_url;
pub mod resources;
pub mod server;
pub mod status;

#[cfg(test)]
mod fixtures;
