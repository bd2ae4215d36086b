//! Fault injection for rabbit-once's tests and chaos runs.
//!
//! - [`proxy`]: a TCP fault proxy — cut every connection, black-hole, add latency, refuse.
//! - [`node`]: a private RabbitMQ node with its own ports and data directory — stop/start the
//!   app, `kill -9` the VM and start it again. The shared broker on 5672 is never touched.
//! - [`cluster`]: N private nodes joined into one cluster, a fault proxy in front of each —
//!   kill, restart, stop/start the app per node, find a quorum queue's leader.
//! - [`names`]: unique queue/exchange/schema names per test run.
//! - [`hostile`]: a fake AMQP broker that misbehaves on purpose — non-UTF-8 strings, deep
//!   tables, garbage, truncated frames, frames on channels nobody opened, a connection closed
//!   over one publish.
//! - [`raw_client`]: a minimal raw AMQP publisher for a real broker, sending whatever bytes it
//!   is given (non-UTF-8 ids and header keys, any nesting, any field type) — a foreign client.
//!
//! Both the fake broker and the raw client encode frames with the testkit's own byte-by-byte
//! encoder (`wire`), never rabbit-once's.

#![deny(missing_docs)]

pub mod cluster;
pub mod hostile;
pub mod names;
pub mod node;
pub mod proxy;
pub mod raw_client;
mod wire;

pub use cluster::{Cluster, NodeState};
pub use hostile::{HostileBroker, Published, Scenario};
pub use names::unique;
pub use node::{BrokerNode, free_port};
pub use proxy::FaultProxy;
pub use raw_client::{PublishOutcome, RawPublisher};
pub use wire::{FieldBytes, RawDelivery, TableBytes};
