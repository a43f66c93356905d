//! Secrets at rest, tokens and passwords.
//!
//! - Secret values (CI/CD secrets, webhook secrets) are sealed with XChaCha20-Poly1305
//!   under a 256-bit key that lives outside the database: in `secret.key` in the data
//!   directory (created with mode 0600 on first start) or in `SLIPWAY_SECRET_KEY`. Each
//!   value gets a random 192-bit nonce and is bound to its row by associated data, so a
//!   sealed value moved to another row does not open.
//! - The same key, through HMAC-SHA256 with a fixed label, signs the audit chain.
//! - Session, API and trigger tokens are 256 random bits shown once; the database keeps
//!   their SHA-256 (enough for high-entropy tokens, and fast to look up).
//! - Passwords are hashed with Argon2id (the argon2 crate's defaults, OWASP's minimum).

use crate::error::{Error, Result};
use crate::types::SecretString;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::path::Path;

/// The environment variable that may hold the key (64 hex digits).
pub const SECRET_KEY_ENV: &str = "SLIPWAY_SECRET_KEY";
/// The key's file name in the data directory.
pub const SECRET_KEY_FILE: &str = "secret.key";

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

/// The 256-bit master key. `Debug` does not print it.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        SecretKey(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> SecretKey {
        let mut k = [0u8; 32];
        OsRng.fill_bytes(&mut k);
        SecretKey(k)
    }

    /// Parses 64 hexadecimal digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<SecretKey> {
        let text = text.trim();
        let bytes = decode_hex(text)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| Error::Key("expected 64 hexadecimal digits (32 bytes)".into()))?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes);
        Ok(SecretKey(k))
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The key from `SLIPWAY_SECRET_KEY` when set, otherwise from `secret.key` in
    /// `data_dir`, created (mode 0600) when missing.
    pub fn from_env_or_data_dir(data_dir: &Path) -> Result<SecretKey> {
        match std::env::var(SECRET_KEY_ENV) {
            Ok(v) => {
                SecretKey::from_hex(&v).map_err(|e| Error::Key(format!("{SECRET_KEY_ENV}: {e}")))
            }
            Err(_) => SecretKey::load_or_create(data_dir),
        }
    }

    /// Reads `data_dir/secret.key`, or creates it with a new key, readable by the owner
    /// only, written and synced before it is used (a key lost after secrets were sealed
    /// with it would lose them).
    pub fn load_or_create(data_dir: &Path) -> Result<SecretKey> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = data_dir.join(SECRET_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(Error::Key(format!(
                        "{} is readable by other users; run: chmod 600 {}",
                        path.display(),
                        path.display()
                    )));
                }
                SecretKey::from_hex(&text)
                    .map_err(|e| Error::Key(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
                let key = SecretKey::generate();
                let tmp = data_dir.join(format!("{SECRET_KEY_FILE}.tmp"));
                let _ = std::fs::remove_file(&tmp);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| Error::io(&tmp, e))?;
                writeln!(f, "{}", key.to_hex()).map_err(|e| Error::io(&tmp, e))?;
                f.sync_all().map_err(|e| Error::io(&tmp, e))?;
                // A concurrent first start may have won: keep its key.
                match std::fs::hard_link(&tmp, &path) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(&tmp);
                        sync_dir(data_dir)?;
                        Ok(key)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let _ = std::fs::remove_file(&tmp);
                        SecretKey::load_or_create(data_dir)
                    }
                    Err(e) => Err(Error::io(&path, e)),
                }
            }
            Err(e) => Err(Error::io(&path, e)),
        }
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Seals and opens secret values, and signs audit checkpoints.
#[derive(Clone)]
pub struct Cipher {
    aead: XChaCha20Poly1305,
    mac_key: [u8; 32],
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(***)")
    }
}

type HmacSha256 = Hmac<Sha256>;

impl Cipher {
    pub fn new(key: &SecretKey) -> Cipher {
        let aead = XChaCha20Poly1305::new((&key.0).into());
        // A separate key for MACs, derived with a fixed label.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&key.0).unwrap_or_else(|_| {
            // HMAC accepts keys of any length; this branch cannot run.
            unreachable!()
        });
        mac.update(b"slipway audit mac key v1");
        let mac_key: [u8; 32] = mac.finalize().into_bytes().into();
        Cipher { aead, mac_key }
    }

    /// `version || nonce || ciphertext+tag`. `context` is authenticated, not stored.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<Vec<u8>> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| Error::Key("encryption failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEAL_VERSION {
            return Err(Error::Decrypt(context.to_string()));
        }
        let nonce = chacha20poly1305::XNonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        self.aead
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| Error::Decrypt(context.to_string()))
    }

    pub fn seal_str(&self, plaintext: &str, context: &str) -> Result<Vec<u8>> {
        self.seal(plaintext.as_bytes(), context)
    }

    pub fn open_str(&self, sealed: &[u8], context: &str) -> Result<SecretString> {
        let bytes = self.open(sealed, context)?;
        String::from_utf8(bytes)
            .map(SecretString::new)
            .map_err(|_| Error::Decrypt(context.to_string()))
    }

    /// HMAC-SHA256 of `data` under the MAC key, in hex.
    pub fn mac_hex(&self, data: &[u8]) -> String {
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(&self.mac_key).unwrap_or_else(|_| unreachable!());
        m.update(data);
        hex(&m.finalize().into_bytes())
    }

    /// Constant-time check of a MAC made by [`Cipher::mac_hex`].
    pub fn verify_mac_hex(&self, data: &[u8], mac: &str) -> bool {
        let Some(expected) = decode_hex(mac) else {
            return false;
        };
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(&self.mac_key).unwrap_or_else(|_| unreachable!());
        m.update(data);
        m.verify_slice(&expected).is_ok()
    }
}

/// A new token: `prefix` then 64 hex digits of randomness.
pub fn new_token(prefix: &str) -> SecretString {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    SecretString::new(format!("{prefix}{}", hex(&b)))
}

/// What the database keeps of a token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Argon2id PHC string for `password`. Slow on purpose: call from a blocking thread.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Key(format!("password hashing failed: {e}")))
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open() {
        let c = Cipher::new(&SecretKey::generate());
        let s = c.seal(b"hunter2", "var:1:A").unwrap_or_default();
        assert!(!s.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(c.open(&s, "var:1:A").ok().as_deref(), Some(&b"hunter2"[..]));
        // Bound to its context, and to its key.
        assert!(c.open(&s, "var:1:B").is_err());
        let other = Cipher::new(&SecretKey::generate());
        assert!(other.open(&s, "var:1:A").is_err());
        // Two seals of one value differ (random nonces).
        assert_ne!(c.seal(b"x", "c").ok(), c.seal(b"x", "c").ok());
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let k1 = SecretKey::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join(SECRET_KEY_FILE);
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        let k2 = SecretKey::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(k1.to_hex(), k2.to_hex());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = SecretKey::load_or_create(dir.path())
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("chmod 600"));
    }

    #[test]
    fn passwords() {
        let h = hash_password("correct horse").unwrap_or_default();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn macs() {
        let c = Cipher::new(&SecretKey::generate());
        let m = c.mac_hex(b"data");
        assert!(c.verify_mac_hex(b"data", &m));
        assert!(!c.verify_mac_hex(b"datA", &m));
        assert!(!c.verify_mac_hex(b"data", "zz"));
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(
            decode_hex(&hex(&[0, 1, 254, 255])),
            Some(vec![0, 1, 254, 255])
        );
        assert!(SecretKey::from_hex("abc").is_err());
    }
}
