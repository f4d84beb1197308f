//! Saving the routing table across restarts: a small postcard file, written atomically
//! (temporary file, then rename), at most [`MAX_SAVED`] contacts.

use std::net::SocketAddr;
use std::path::Path;

use keywire_proto::kad::Contact;
use keywire_proto::NodeId;
use serde::{Deserialize, Serialize};

/// Contacts saved at most (more than enough to re-join: any one live contact will do).
pub const MAX_SAVED: usize = 200;
const FORMAT_VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct SavedTable {
    version: u8,
    contacts: Vec<([u8; 32], SocketAddr)>,
}

/// Writes `contacts` to `path` atomically.
pub fn save(path: &Path, contacts: &[Contact]) -> std::io::Result<()> {
    let table = SavedTable {
        version: FORMAT_VERSION,
        contacts: contacts
            .iter()
            .take(MAX_SAVED)
            .map(|c| (*c.node_id.as_bytes(), c.addr))
            .collect(),
    };
    let bytes = postcard::to_stdvec(&table).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Reads a saved table; a missing, unreadable or foreign file gives no contacts.
pub fn load(path: &Path) -> Vec<Contact> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    match postcard::from_bytes::<SavedTable>(&bytes) {
        Ok(table) if table.version == FORMAT_VERSION => table
            .contacts
            .into_iter()
            .take(MAX_SAVED)
            .filter_map(|(key, addr)| Some(Contact::new(NodeId::from_bytes(key).ok()?, addr)))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keywire_proto::SecretKey;

    #[test]
    fn round_trip_and_garbage() {
        let dir = std::env::temp_dir().join(format!("kw-dht-persist-{}", std::process::id()));
        let path = dir.join("table.bin");
        let c = Contact::new(
            SecretKey::from_seed([1; 32]).node_id(),
            "127.0.0.1:9".parse().unwrap(),
        );
        save(&path, &[c]).unwrap();
        assert_eq!(load(&path), vec![c]);
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load(&path).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
