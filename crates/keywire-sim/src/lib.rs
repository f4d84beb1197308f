//! Deterministic simulator for keywire's sans-IO protocol cores.
//!
//! The simulator drives the very same cores real nodes run (no mocks): it owns a virtual clock
//! and a seeded RNG, carries datagrams between cores with latency and loss, and measures.
//! Same seed, same result. [`dht`] simulates the Kademlia DHT under churn.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod dht;
mod dht_net;
pub mod stats;
