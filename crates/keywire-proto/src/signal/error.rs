//! Why an incoming envelope was refused.

/// Why [`crate::signal::open`] refused a sealed envelope. Every variant is counted by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Larger than [`crate::signal::MAX_SEALED`]: refused before any crypto.
    #[error("envelope of {0} bytes exceeds the limit")]
    Oversized(usize),
    /// Too short, wrong version, failed decryption, or a malformed inner layout.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// Decrypted and well formed, but addressed to another node (re-sealed by a third party).
    #[error("envelope addressed to another node")]
    WrongDestination,
    /// The source's signature does not verify.
    #[error("bad signature")]
    BadSignature,
}

/// Why a well-formed, authentic envelope was still refused by the [`crate::signal::ReplayGuard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// Its timestamp lies outside the accepted window around the receiver's clock, or before
    /// the receiver started (which remembers nothing from earlier runs).
    #[error("timestamp outside the window")]
    Stale,
    /// Its (source, queue, sequence) was accepted before.
    #[error("replayed envelope")]
    Replay,
    /// The seen-id cache is full of unexpired entries: refused rather than forgetting one.
    #[error("replay cache full")]
    CacheFull,
}
