//! [`Keyring`]: the file channel's key provider. Keys live in key files named by the
//! configuration's `[[encryption.keys]]` table (id, alias, file, and optionally a password file),
//! in the manner of Flume's key store with its aliases and password files.
//!
//! A key file holds one of two things, as one line of text:
//! - a raw key: 64 hexadecimal digits;
//! - a wrapped key: `sluicegate-wrapped-key-v1 ITERATIONS SALT NONCE SEALED`, where the key is
//!   sealed with XChaCha20-Poly1305 under PBKDF2-HMAC-SHA256(password, SALT, ITERATIONS). A wrong
//!   password fails the tag, so it is reported, never turned into a wrong key.
//!
//! **Invariant:** key and password files that other users can read are refused, and key bytes are
//! overwritten with zeros when the keyring is dropped.

use std::fmt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::Aead;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use serde::{Deserialize, Serialize};
use sluicegate_core::{Algorithm, Key, KeyId, KeyProvider};
use zeroize::{Zeroize, Zeroizing};

use crate::config::ConfigError;

/// The first word of a wrapped key file.
pub const WRAPPED_KEY_MAGIC: &str = "sluicegate-wrapped-key-v1";
/// PBKDF2 iterations [`wrap_key`] uses unless told otherwise (OWASP's figure for SHA-256).
pub const DEFAULT_WRAP_ITERATIONS: u32 = 600_000;

const WRAP_SALT_BYTES: usize = 16;
const WRAP_NONCE_BYTES: usize = 24;

/// The `[encryption]` section of the configuration. Empty (the default): plaintext, and a sealed
/// log is refused with the id of the key it needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The alias of the key new segments and checkpoints are sealed with; none: write plaintext
    /// (segments sealed earlier stay readable while their keys are listed).
    pub active_key: Option<String>,
    /// Every key the channel may need: the active one and those of segments still in the log.
    pub keys: Vec<KeyConfig>,
    /// The AEAD new log segments are sealed with. Segments already written keep theirs, so this
    /// may change at any restart. Checkpoints are always sealed with XChaCha20-Poly1305.
    #[serde(skip_serializing_if = "AlgorithmChoice::is_auto")]
    pub algorithm: AlgorithmChoice,
}

/// `encryption.algorithm`: which AEAD seals new log segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlgorithmChoice {
    /// AES-256-GCM where the processor has AES and carry-less multiply instructions (x86-64
    /// AES-NI and PCLMULQDQ, or the ARMv8 AES and PMULL extensions), XChaCha20-Poly1305
    /// elsewhere: whichever is faster here.
    #[default]
    Auto,
    /// XChaCha20-Poly1305.
    #[serde(rename = "xchacha20-poly1305")]
    XChaCha20Poly1305,
    /// AES-256-GCM (constant time, but slow without AES instructions).
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

impl AlgorithmChoice {
    fn is_auto(&self) -> bool {
        *self == AlgorithmChoice::Auto
    }

    /// The algorithm this choice means on this machine.
    pub fn resolve(self) -> Algorithm {
        match self {
            AlgorithmChoice::XChaCha20Poly1305 => Algorithm::XChaCha20Poly1305,
            AlgorithmChoice::Aes256Gcm => Algorithm::Aes256Gcm,
            AlgorithmChoice::Auto if aes_instructions() => Algorithm::Aes256Gcm,
            AlgorithmChoice::Auto => Algorithm::XChaCha20Poly1305,
        }
    }
}

/// True if the processor has the instructions that make AES-GCM fast.
fn aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

impl EncryptionConfig {
    /// True if the section names no key at all (plaintext, and sealed logs refused).
    pub fn is_off(&self) -> bool {
        self.active_key.is_none() && self.keys.is_empty()
    }
}

/// One key of the `[[encryption.keys]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The id written in every segment and checkpoint sealed with this key (1 to 65535). Never
    /// give an id to a different key while anything sealed with it may remain.
    pub id: KeyId,
    /// The name `active_key` uses.
    pub alias: String,
    /// The key file: a raw key, or a wrapped one if `password_file` is set.
    pub key_file: PathBuf,
    /// The file holding the password of a wrapped key (its first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// The keys of a file channel, loaded from their files. Salts come from the operating system's
/// random source.
pub struct Keyring {
    keys: Vec<(KeyId, String, Key)>,
    active: Option<KeyId>,
    algorithm: Algorithm,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self.keys.iter().map(|(id, alias, _)| (id, alias)).collect();
        f.debug_struct("Keyring")
            .field("keys", &keys)
            .field("active", &self.active)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl Keyring {
    /// No keys: plaintext.
    pub fn empty() -> Self {
        Keyring {
            keys: Vec::new(),
            active: None,
            algorithm: Algorithm::XChaCha20Poly1305,
        }
    }

    /// Loads every key the section names, checking ids, aliases, files and passwords.
    pub fn load(config: &EncryptionConfig) -> Result<Self, ConfigError> {
        let mut ring = Keyring::empty();
        ring.algorithm = config.algorithm.resolve();
        for k in &config.keys {
            let what = format!("encryption key {:?} (id {})", k.alias, k.id);
            if k.id == 0 {
                return Err(ConfigError::new(format!(
                    "{what}: id 0 means plaintext; use 1 to 65535"
                )));
            }
            if k.alias.trim().is_empty() {
                return Err(ConfigError::new(format!(
                    "encryption key id {}: the alias is empty",
                    k.id
                )));
            }
            if let Some((_, other, _)) = ring.keys.iter().find(|(id, _, _)| *id == k.id) {
                return Err(ConfigError::new(format!(
                    "{what}: id {} is also given to {other:?}",
                    k.id
                )));
            }
            if ring.keys.iter().any(|(_, a, _)| *a == k.alias) {
                return Err(ConfigError::new(format!(
                    "{what}: alias {:?} is used twice",
                    k.alias
                )));
            }
            let key = load_key(&k.key_file, k.password_file.as_deref())
                .map_err(|e| ConfigError::new(format!("{what}: {e}")))?;
            ring.keys.push((k.id, k.alias.clone(), key));
        }
        if let Some(alias) = &config.active_key {
            let Some((id, _, _)) = ring.keys.iter().find(|(_, a, _)| a == alias) else {
                let known: Vec<_> = ring.keys.iter().map(|(_, a, _)| a.as_str()).collect();
                return Err(ConfigError::new(format!(
                    "encryption.active_key {alias:?} is not among encryption.keys (aliases: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            };
            ring.active = Some(*id);
        }
        Ok(ring)
    }

    /// Overwrites every key with zeros (what dropping the keyring does).
    fn wipe(&mut self) {
        for (_, _, key) in &mut self.keys {
            key.zeroize();
        }
    }
}

impl KeyProvider for Keyring {
    fn active(&self) -> Option<KeyId> {
        self.active
    }

    fn key(&self, id: KeyId) -> Option<&Key> {
        self.keys
            .iter()
            .find(|(k, _, _)| *k == id)
            .map(|(_, _, key)| key)
    }

    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    fn fresh_salt(&mut self) -> [u8; sluicegate_core::SALT_BYTES] {
        let mut salt = [0u8; sluicegate_core::SALT_BYTES];
        if getrandom::fill(&mut salt).is_err() {
            // No random source (practically never on a server): the clock still differs between
            // runs, and the nonce's segment number keeps records apart within one.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            salt = (now ^ u64::from(std::process::id()).rotate_left(40)).to_le_bytes();
        }
        salt
    }
}

/// Reads a key file (unwrapping it with the password file if one is given). The texts read are
/// zeroed when dropped, on every path.
fn load_key(path: &Path, password: Option<&Path>) -> Result<Key, String> {
    let text = Zeroizing::new(read_secret(path, "key file")?);
    if text.trim_start().starts_with(WRAPPED_KEY_MAGIC) {
        let Some(p) = password else {
            return Err(format!(
                "{} holds a wrapped key: set password_file",
                path.display()
            ));
        };
        let pw = Zeroizing::new(read_secret(p, "password file")?);
        let line = pw.lines().next().unwrap_or("");
        unwrap_key(text.trim(), line.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
    } else if password.is_some() {
        Err(format!(
            "{} holds a raw key, not a wrapped one, yet password_file is set",
            path.display()
        ))
    } else {
        parse_hex_key(text.trim()).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Reads a secret file, refusing one that other users can read.
fn read_secret(path: &Path, what: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "the {what} {} can be read by other users (mode {mode:o}): chmod 600 it",
                path.display()
            ));
        }
    }
    let _ = meta;
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

fn parse_hex_key(text: &str) -> Result<Key, String> {
    let mut key = [0u8; 32];
    decode_hex(text, &mut key).map_err(|e| format!("not a key: {e} (expected 64 hex digits)"))?;
    Ok(key)
}

fn decode_hex(text: &str, out: &mut [u8]) -> Result<(), String> {
    if text.len() != 2 * out.len() {
        return Err(format!(
            "{} characters where {} were expected",
            text.len(),
            2 * out.len()
        ));
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("{:?} is not hexadecimal", &text[2 * i..2 * i + 2]))?;
    }
    Ok(())
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn wrapping_cipher(password: &[u8], salt: &[u8], iterations: u32) -> XChaCha20Poly1305 {
    let mut kek = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut kek);
    let cipher = XChaCha20Poly1305::new(&kek.into());
    kek.zeroize();
    cipher
}

/// Unwraps a wrapped key line with a password.
fn unwrap_key(line: &str, password: &[u8]) -> Result<Key, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, iterations, salt, nonce, sealed] = fields[..] else {
        return Err(format!(
            "a wrapped key has 5 fields ({WRAPPED_KEY_MAGIC} ITERATIONS SALT NONCE SEALED), this has {}",
            fields.len()
        ));
    };
    let iterations: u32 = iterations
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("bad iteration count {iterations:?}"))?;
    let mut s = [0u8; WRAP_SALT_BYTES];
    let mut n = [0u8; WRAP_NONCE_BYTES];
    let mut c = [0u8; 32 + 16];
    decode_hex(salt, &mut s).map_err(|e| format!("bad salt: {e}"))?;
    decode_hex(nonce, &mut n).map_err(|e| format!("bad nonce: {e}"))?;
    decode_hex(sealed, &mut c).map_err(|e| format!("bad sealed key: {e}"))?;
    let mut plain = wrapping_cipher(password, &s, iterations)
        .decrypt(&n.into(), &c[..])
        .map_err(|_| {
            "the password does not open this key (wrong password, or the file was altered)"
                .to_string()
        })?;
    let mut key = [0u8; 32];
    key.copy_from_slice(&plain);
    plain.zeroize();
    Ok(key)
}

/// A new random key, as a key file's line (64 hex digits).
pub fn new_key_line() -> Result<String, std::io::Error> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
    let line = encode_hex(&key);
    key.zeroize();
    Ok(line)
}

/// Wraps the raw key in `key_line` under `password`, as a wrapped key file's line.
pub fn wrap_key(key_line: &str, password: &[u8], iterations: u32) -> Result<String, String> {
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    if iterations == 0 {
        return Err("the iteration count must be at least 1".into());
    }
    let mut key = parse_hex_key(key_line.trim())?;
    let mut salt = [0u8; WRAP_SALT_BYTES];
    let mut nonce = [0u8; WRAP_NONCE_BYTES];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
    let sealed = wrapping_cipher(password, &salt, iterations)
        .encrypt(&nonce.into(), &key[..])
        .map_err(|_| "cannot seal the key".to_string())?;
    key.zeroize();
    Ok(format!(
        "{WRAPPED_KEY_MAGIC} {iterations} {} {} {}",
        encode_hex(&salt),
        encode_hex(&nonce),
        encode_hex(&sealed)
    ))
}

/// Writes a secret file readable by its owner only, refusing to replace an existing file.
pub fn write_secret_file(path: &Path, line: &str) -> Result<(), std::io::Error> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    writeln!(f, "{line}")?;
    f.sync_all()
}

/// The same section with relative paths joined to `base`.
pub(crate) fn resolve(config: &mut EncryptionConfig, base: &Path) {
    let join = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    for k in &mut config.keys {
        join(&mut k.key_file);
        if let Some(p) = &mut k.password_file {
            join(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn a_wrapped_key_opens_with_its_password_only() {
        let line = wrap_key(KEY, b"hunter2", 1000).unwrap();
        assert!(line.starts_with(WRAPPED_KEY_MAGIC));
        assert!(!line.contains(KEY));
        let key = unwrap_key(&line, b"hunter2").unwrap();
        assert_eq!(encode_hex(&key), KEY);
        let err = unwrap_key(&line, b"hunter3").unwrap_err();
        assert!(err.contains("wrong password"), "{err}");
        // One sealed digit changed: refused as well.
        let mut altered = line.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == '0' { '1' } else { '0' });
        assert!(unwrap_key(&altered, b"hunter2").is_err());
    }

    /// The keyring's debug form names ids and aliases, never key bytes; wiping zeroes them.
    #[test]
    fn keys_stay_out_of_debug_output_and_are_wiped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.key");
        write_secret_file(&file, KEY).unwrap();
        let mut ring = Keyring::load(&EncryptionConfig {
            active_key: Some("k".into()),
            keys: vec![KeyConfig {
                id: 3,
                alias: "k".into(),
                key_file: file,
                password_file: None,
            }],
            ..EncryptionConfig::default()
        })
        .unwrap();
        assert_eq!(encode_hex(ring.key(3).unwrap()), KEY);
        let shown = format!("{ring:?}");
        assert!(
            shown.contains("\"k\"") && !shown.contains("0001020304"),
            "{shown}"
        );
        ring.wipe();
        assert_eq!(ring.key(3).unwrap(), &[0u8; 32]);
    }

    #[test]
    fn bad_key_text_is_named() {
        assert!(parse_hex_key("abc").unwrap_err().contains("64 hex digits"));
        let bad = "zz".repeat(32);
        assert!(parse_hex_key(&bad).unwrap_err().contains("not hexadecimal"));
        assert_eq!(new_key_line().unwrap().len(), 64);
        assert_ne!(new_key_line().unwrap(), new_key_line().unwrap());
    }
}
