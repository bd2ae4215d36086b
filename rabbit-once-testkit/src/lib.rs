//! Fault injection for rabbit-once's tests and chaos runs.
//!
//! - [`proxy`]: a TCP fault proxy — cut every connection, black-hole, add latency, refuse.
//! - [`node`]: a private RabbitMQ node with its own ports and data directory — stop/start the
//!   app, `kill -9` the VM and start it again. The shared broker on 5672 is never touched.
//! - [`names`]: unique queue/exchange/schema names per test run.

pub mod names;
pub mod node;
pub mod proxy;

pub use names::unique;
pub use node::{BrokerNode, free_port};
pub use proxy::FaultProxy;
