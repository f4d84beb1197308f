//! keywire's wire formats and sans-IO protocol cores.
//!
//! Nothing in this crate opens a socket, reads a clock or spawns a task: time and randomness are
//! passed in by the caller, so every core can be driven by tests and the simulator
//! deterministically. The async shell lives in the `keywire` crate.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod checked_text;
pub mod datagram;
pub mod gate;
pub mod gro;
pub mod identity;
pub mod intro;
pub mod kad;
pub mod link;
pub mod nat;
pub mod network_id;
pub mod probe;
pub mod sidewire;
pub mod signal;
pub mod ticket;
pub mod wire;

pub use identity::{NodeId, NodeIdError, SecretKey};
pub use network_id::{NetworkId, NetworkProof, Role};
pub use ticket::{NodeAddr, Ticket, TicketError};
