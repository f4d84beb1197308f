//! Dispatching accepted connections to protocol handlers by ALPN.
//!
//! Who sees what: an accepted connection whose ALPN has a registered handler goes to that
//! handler, on a task of its own; every other accepted connection (its ALPN is one the endpoint
//! accepts but no handler is registered for) waits in the bounded accept queue for
//! [`crate::Endpoint::accept`]. A connection nobody takes from a full queue is closed with
//! [`crate::close_code::BUSY`] and counted in `accept_queue_full`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use crate::Connection;

/// A boxed future, as handlers return it.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Serves connections of one protocol. Any `Fn(Connection) -> impl Future` is a handler.
pub trait ProtocolHandler: Send + Sync + 'static {
    /// Serves one connection; runs on its own task.
    fn handle(&self, connection: Connection) -> BoxFuture;
}

impl<F, Fut> ProtocolHandler for F
where
    F: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(&self, connection: Connection) -> BoxFuture {
        Box::pin(self(connection))
    }
}

type HandlerTable = HashMap<Vec<u8>, Arc<dyn ProtocolHandler>>;

/// The table of registered handlers.
#[derive(Default, Clone)]
pub(crate) struct Router {
    handlers: Arc<RwLock<HandlerTable>>,
}

impl Router {
    pub(crate) fn insert(&self, alpn: Vec<u8>, handler: Arc<dyn ProtocolHandler>) {
        self.write().insert(alpn, handler);
    }

    pub(crate) fn remove(&self, alpn: &[u8]) -> bool {
        self.write().remove(alpn).is_some()
    }

    pub(crate) fn get(&self, alpn: &[u8]) -> Option<Arc<dyn ProtocolHandler>> {
        self.handlers
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(alpn)
            .cloned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HandlerTable> {
        // A handler table is always consistent (single inserts and removes), so a poisoned lock
        // holds valid data.
        self.handlers
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}
