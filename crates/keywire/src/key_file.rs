//! The secret key file: created once, atomically, private to its owner, never replaced.
//!
//! Format: one line, `keywire-secret-key-v1 <64 hex digits of the ed25519 seed>`. The sidewire
//! compatibility key (secp256k1) is kept the same way in its own file:
//! `keywire-sidewire-secp256k1-v1 <64 hex digits of the secret scalar>`.
//!
//! A file that is readable by group or others, owned by another user, or not in this format is
//! refused with an error that says which — it is never overwritten, because replacing a key
//! silently changes the node's identity.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use keywire_proto::sidewire::SidewireSecretKey;
use keywire_proto::SecretKey;

/// Environment variable naming the key file, overriding the default location.
pub const KEY_ENV: &str = "KEYWIRE_KEY";
/// A secret key kept in a key file: 32 secret bytes after a header naming the kind.
pub trait StoredKey: Sized {
    /// The first word of the file.
    const HEADER: &'static str;
    /// A fresh random key.
    fn generate() -> Self;
    /// The 32 secret bytes.
    fn secret_bytes(&self) -> [u8; 32];
    /// The key from its 32 secret bytes, if they are valid.
    fn from_secret_bytes(bytes: [u8; 32]) -> Option<Self>;
}

impl StoredKey for SecretKey {
    const HEADER: &'static str = "keywire-secret-key-v1";
    fn generate() -> Self {
        SecretKey::generate(&mut rand::rngs::OsRng)
    }
    fn secret_bytes(&self) -> [u8; 32] {
        self.to_seed()
    }
    fn from_secret_bytes(bytes: [u8; 32]) -> Option<Self> {
        Some(SecretKey::from_seed(bytes))
    }
}

impl StoredKey for SidewireSecretKey {
    const HEADER: &'static str = "keywire-sidewire-secp256k1-v1";
    fn generate() -> Self {
        SidewireSecretKey::generate(&mut rand::rngs::OsRng)
    }
    fn secret_bytes(&self) -> [u8; 32] {
        self.to_bytes()
    }
    fn from_secret_bytes(bytes: [u8; 32]) -> Option<Self> {
        SidewireSecretKey::from_bytes(&bytes).ok()
    }
}

/// The sidewire key file that goes with a node key file: same directory, `<stem>.sidewire.key`
/// (`secret.key` → `secret.sidewire.key`), so that each node key has its own.
pub fn sidewire_key_path(node_key_path: &Path) -> PathBuf {
    let stem = node_key_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("secret");
    node_key_path.with_file_name(format!("{stem}.sidewire.key"))
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Reading or creating the file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Group or others may read or write the file.
    #[error(
        "key file {path} has mode {mode:o}: it must be readable by its owner only (chmod 600)"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file belongs to another user.
    #[error("key file {path} is owned by uid {owner}, not by this user (uid {me})")]
    WrongOwner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid of this process.
        me: u32,
    },
    /// The file is not a keywire key file.
    #[error("key file {path} is malformed ({reason}); it was left untouched")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No path was given and the platform has no data directory.
    #[error(
        "no key file given and no user data directory found; pass --key PATH or set {KEY_ENV}"
    )]
    NoDefaultLocation,
}

/// The default key file: `$KEYWIRE_KEY`, else `<data dir>/keywire/secret.key`.
pub fn default_key_path() -> Result<PathBuf, KeyFileError> {
    if let Some(path) = std::env::var_os(KEY_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let dir = dirs::data_dir().ok_or(KeyFileError::NoDefaultLocation)?;
    Ok(dir.join("keywire").join("secret.key"))
}

/// Loads the key at `path`, creating a new one if no file exists there.
pub fn load_or_create(path: &Path) -> Result<SecretKey, KeyFileError> {
    load_or_create_key(path)
}

/// Loads the key at `path`, refusing files that are too open, foreign or malformed.
pub fn load(path: &Path) -> Result<SecretKey, KeyFileError> {
    load_key(path)
}

/// Creates a new key file at `path` atomically: the file appears complete or not at all, and an
/// existing file (even one that appeared a moment ago) is never replaced.
pub fn create(path: &Path) -> Result<SecretKey, KeyFileError> {
    create_key(path)
}

/// [`load_or_create`] for any kind of stored key.
pub fn load_or_create_key<K: StoredKey>(path: &Path) -> Result<K, KeyFileError> {
    match load_key(path) {
        Err(KeyFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            create_key(path)
        }
        other => other,
    }
}

/// [`load`] for any kind of stored key.
pub fn load_key<K: StoredKey>(path: &Path) -> Result<K, KeyFileError> {
    let io_err = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(io_err)?;
    if !meta.is_file() {
        return Err(KeyFileError::Malformed {
            path: path.to_owned(),
            reason: "not a regular file",
        });
    }
    check_private(path, &meta)?;
    let text = fs::read(path).map_err(io_err)?;
    parse(&text).ok_or_else(|| KeyFileError::Malformed {
        path: path.to_owned(),
        reason: "expected one line: the key kind's header, a space, 64 hex digits of a valid key",
    })
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), KeyFileError> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let me = crate::sys::effective_uid();
    if meta.uid() != me {
        return Err(KeyFileError::WrongOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &fs::Metadata) -> Result<(), KeyFileError> {
    Ok(())
}

fn parse<K: StoredKey>(text: &[u8]) -> Option<K> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let hex = line.strip_prefix(K::HEADER)?.strip_prefix(' ')?;
    if hex.len() != 64 {
        return None;
    }
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    K::from_secret_bytes(seed)
}

fn format<K: StoredKey>(key: &K) -> String {
    let hex: String = key
        .secret_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{} {hex}\n", K::HEADER)
}

/// [`create`] for any kind of stored key.
pub fn create_key<K: StoredKey>(path: &Path) -> Result<K, KeyFileError> {
    let io_err = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_private_dir(dir).map_err(io_err)?;

    let key = K::generate();
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("secret.key");
    let tmp = dir.join(format!(
        ".{file_name}.{}.{:x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let write_tmp = || -> io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(format(&key).as_bytes())?;
        file.sync_all()
    };
    if let Err(e) = write_tmp() {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    // A hard link fails if `path` exists, unlike rename: two processes racing to create the key
    // both end up using the one that won.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => load_key(path),
        Err(e) => Err(io_err(e)),
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "keywire-keyfile-{name}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn creates_once_then_loads_the_same_key() {
        let dir = temp_dir("create");
        let path = dir.join("nested").join("secret.key");
        let first = load_or_create(&path).unwrap();
        let second = load_or_create(&path).unwrap();
        assert_eq!(first.node_id(), second.node_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let parent = fs::metadata(path.parent().unwrap()).unwrap();
            assert_eq!(parent.permissions().mode() & 0o777, 0o700);
        }
        // No temporary files are left behind.
        let entries: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn refuses_open_permissions_and_never_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("perm");
        let path = dir.join("secret.key");
        let key = load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, KeyFileError::TooOpen { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load(&path).unwrap().node_id(), key.node_id());
        fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn refuses_malformed_files_and_leaves_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("malformed");
        let path = dir.join("secret.key");
        for bad in [
            &b""[..],
            b"hello",
            b"keywire-secret-key-v1 zz",
            &[0xff, 0xfe],
        ] {
            fs::write(&path, bad).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = load_or_create(&path).unwrap_err();
            assert!(matches!(err, KeyFileError::Malformed { .. }), "{err}");
            assert_eq!(
                fs::read(&path).unwrap(),
                bad,
                "a malformed key file must be left untouched"
            );
        }
        fs::remove_dir_all(dir).unwrap();
    }

    /// Root-only: only root can give a file to another user. `.ci/run` runs it (as root) with
    /// `--ignored`.
    #[cfg(unix)]
    #[test]
    #[ignore = "needs root to chown a file; run by .ci/run's root stage"]
    fn refuses_files_owned_by_another_user() {
        assert_eq!(
            crate::sys::effective_uid(),
            0,
            "this test needs root (chown)"
        );
        let dir = temp_dir("owner");
        let path = dir.join("secret.key");
        load_or_create(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(
            matches!(
                err,
                KeyFileError::WrongOwner {
                    owner: 4242,
                    me: 0,
                    ..
                }
            ),
            "{err}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn file_format_round_trip(seed in proptest::prelude::any::<[u8; 32]>()) {
            let key = SecretKey::from_seed(seed);
            let parsed = parse::<SecretKey>(format(&key).as_bytes()).expect("own format parses");
            proptest::prop_assert_eq!(parsed.to_seed(), seed);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse::<SecretKey>(&bytes);
            let _ = parse::<SidewireSecretKey>(&bytes);
        }
    }

    #[test]
    fn file_format_fixture() {
        let key = SecretKey::from_seed([0xab; 32]);
        let text = format(&key);
        assert_eq!(text, format!("keywire-secret-key-v1 {}\n", "ab".repeat(32)));
        assert_eq!(
            parse::<SecretKey>(text.as_bytes()).unwrap().node_id(),
            key.node_id()
        );
        assert!(parse::<SecretKey>(text.to_uppercase().as_bytes()).is_none());
        // One kind's file is never read as the other's.
        assert!(parse::<SidewireSecretKey>(text.as_bytes()).is_none());
    }

    #[test]
    fn sidewire_key_file_is_private_separate_and_stable() {
        let dir = temp_dir("sidewire");
        let node_path = dir.join("secret.key");
        let path = sidewire_key_path(&node_path);
        assert_eq!(path, dir.join("secret.sidewire.key"));
        let first: SidewireSecretKey = load_or_create_key(&path).unwrap();
        let second: SidewireSecretKey = load_or_create_key(&path).unwrap();
        assert_eq!(first.public_key(), second.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("keywire-sidewire-secp256k1-v1 "), "{text}");
        // A zero scalar is no secp256k1 key: refused, the file left as it is.
        let zero = dir.join("zero.key");
        let zero_text = format!("keywire-sidewire-secp256k1-v1 {}\n", "00".repeat(32));
        fs::write(&zero, &zero_text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&zero, fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(
            load_or_create_key::<SidewireSecretKey>(&zero),
            Err(KeyFileError::Malformed { .. })
        ));
        assert_eq!(fs::read_to_string(&zero).unwrap(), zero_text);
        fs::remove_dir_all(dir).unwrap();
    }
}
