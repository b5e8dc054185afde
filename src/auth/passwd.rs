//! Mosquitto-compatible password files: `user:$7$<iterations>$<salt>$<hash>` (PBKDF2-HMAC-SHA512,
//! what `mosquitto_passwd` writes today) and `user:$6$<salt>$<hash>` (SHA-512 of password then
//! salt, Mosquitto 1.6 and earlier). Salt and hash are standard base64.

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::AuthError;

/// PBKDF2 iterations for new hashes; `mosquitto_passwd` uses 101.
const ITERATIONS: u32 = 101;
/// Salt bytes for new hashes, as `mosquitto_passwd`.
const SALT_LEN: usize = 12;
/// Largest iteration count accepted from a file, so a hostile file cannot stall logins.
const MAX_ITERATIONS: u32 = 1_000_000;
/// Bytes of every hash `mosquitto_passwd` writes (SHA-512). A shorter stored hash would make
/// a guess succeed once in 256^len tries (and an empty one always), so it is a load error.
const HASH_LEN: usize = 64;

/// One user's stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hash {
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// `$6$`: SHA-512(password || salt).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
}

impl Hash {
    fn parse(text: &str) -> Result<Hash, String> {
        let parts: Vec<&str> = text.split('$').collect();
        let b64 = |s: &str, what: &str| {
            B64.decode(s)
                .map_err(|e| format!("{what} is not base64: {e}"))
        };
        let salt_and_hash = |salt: &str, hash: &str| -> Result<(Vec<u8>, Vec<u8>), String> {
            let (salt, hash) = (b64(salt, "salt")?, b64(hash, "hash")?);
            if salt.is_empty() {
                return Err("empty salt".into());
            }
            if hash.len() != HASH_LEN {
                return Err(format!("hash is {} bytes, expected {HASH_LEN}", hash.len()));
            }
            Ok((salt, hash))
        };
        match parts.as_slice() {
            ["", "7", iterations, salt, hash] => {
                let iterations: u32 = iterations
                    .parse()
                    .map_err(|_| format!("bad iteration count {iterations:?}"))?;
                if iterations == 0 || iterations > MAX_ITERATIONS {
                    return Err(format!("iteration count {iterations} out of range"));
                }
                let (salt, hash) = salt_and_hash(salt, hash)?;
                Ok(Hash::Pbkdf2 {
                    iterations,
                    salt,
                    hash,
                })
            }
            ["", "6", salt, hash] => {
                let (salt, hash) = salt_and_hash(salt, hash)?;
                Ok(Hash::Sha512 { salt, hash })
            }
            _ => Err("not a $7$ (PBKDF2-SHA512) or $6$ (SHA-512) hash".into()),
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        let (computed, stored) = match self {
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                (out, hash)
            }
            Hash::Sha512 { salt, hash } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                (h.finalize().to_vec(), hash)
            }
        };
        // Constant time: no timing hint of how much of the hash matched.
        computed.len() == stored.len() && bool::from(computed.ct_eq(stored))
    }

    fn render(&self) -> String {
        match self {
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(hash)),
            Hash::Sha512 { salt, hash } => format!("$6${}${}", B64.encode(salt), B64.encode(hash)),
        }
    }

    /// A new `$7$` hash with a random salt.
    fn new(password: &[u8]) -> Result<Hash, String> {
        let mut salt = vec![0u8; SALT_LEN];
        getrandom::getrandom(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
        let mut hash = vec![0u8; HASH_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, ITERATIONS, &mut hash);
        Ok(Hash::Pbkdf2 {
            iterations: ITERATIONS,
            salt,
            hash,
        })
    }
}

/// The users of a password file and their hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    users: BTreeMap<String, Hash>,
    /// Checked for a user name that is not in the file, so that an unknown user costs as much
    /// as a wrong password and the time of a refusal does not tell which names exist: the
    /// dearest PBKDF2 cost in the file.
    dummy_iterations: u32,
}

impl PasswordFile {
    /// Reads a password file; errors name the file and line.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        super::load_file(path, PasswordFile::parse)
    }

    /// Parses password-file text: `Err((line, problem))`. Blank lines and `#` comments are
    /// skipped, as Mosquitto does.
    pub fn parse(text: &str) -> Result<PasswordFile, (usize, String)> {
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or((i + 1, "expected user:hash".to_string()))?;
            if user.is_empty() {
                return Err((i + 1, "empty user name".into()));
            }
            let hash = Hash::parse(hash).map_err(|e| (i + 1, format!("user {user:?}: {e}")))?;
            users.insert(user.to_string(), hash);
        }
        let mut file = PasswordFile {
            users,
            dummy_iterations: 0,
        };
        file.price_unknown_users();
        Ok(file)
    }

    fn price_unknown_users(&mut self) {
        self.dummy_iterations = self
            .users
            .values()
            .map(|h| match h {
                Hash::Pbkdf2 { iterations, .. } => *iterations,
                Hash::Sha512 { .. } => 1,
            })
            .max()
            .unwrap_or(ITERATIONS);
    }

    /// True if `user` exists and `password` matches its hash. Costs a PBKDF2 run either way:
    /// call it off the async workers (`spawn_blocking`).
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(h) => h.verify(password),
            None => {
                let dummy = Hash::Pbkdf2 {
                    iterations: self.dummy_iterations.max(1),
                    salt: vec![0; SALT_LEN],
                    hash: vec![0; HASH_LEN],
                };
                std::hint::black_box(dummy.verify(password));
                false
            }
        }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True if there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Adds or replaces `user` with a new `$7$` hash of `password`.
    pub fn set(&mut self, user: &str, password: &[u8]) -> Result<(), String> {
        if user.is_empty() || user.contains(':') {
            return Err("a user name must be non-empty and contain no ':'".into());
        }
        self.users.insert(user.to_string(), Hash::new(password)?);
        self.price_unknown_users();
        Ok(())
    }

    /// Removes `user`; false if it was not there.
    pub fn remove(&mut self, user: &str) -> bool {
        let removed = self.users.remove(user).is_some();
        self.price_unknown_users();
        removed
    }

    /// The file text, one `user:hash` line per user.
    pub fn render(&self) -> String {
        self.users
            .iter()
            .map(|(u, h)| format!("{u}:{}\n", h.render()))
            .collect()
    }
}

/// What `tern passwd` does to one user.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Add the user or replace its password.
    Set(&'a [u8]),
    /// Remove the user.
    Delete,
}

/// Applies `change` for `user` to the password file at `path` (created if `create`, or if it
/// does not exist), writing it back atomically with owner-only permissions.
pub fn update_file(
    path: &Path,
    user: &str,
    change: Change<'_>,
    create: bool,
) -> Result<(), String> {
    let mut file = if create || !path.exists() {
        PasswordFile::default()
    } else {
        PasswordFile::load(path).map_err(|e| e.to_string())?
    };
    match change {
        Change::Set(password) => file.set(user, password)?,
        Change::Delete => {
            if !file.remove(user) {
                return Err(format!("{}: no user {user:?}", path.display()));
            }
        }
    }
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(file.render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines written by Mosquitto 2.0.11's `mosquitto_passwd` (secret / hunter2).
    const MOSQUITTO: &str = "alice:$7$101$PILNxwLtdQgffPua$WDsUJsfXLAuViKxothsGSGhpzGGzSJryzUPDm9bstko8Quis8AKYzjk95gTSuVu147j4qRMrb5NbcLhNYjeo7g==\n\
bob:$6$YcCCHIrg5mMsdleC$xfyC3VKqP8+kh6nSX3R7LBnpV66VLilREUW6oL88jkAmr26NaMIqrgGwAyLooDQfUEdr7Sm0o3cUNHHS5VqnSg==\n";

    #[test]
    fn verifies_mosquitto_hashes() {
        let f = PasswordFile::parse(MOSQUITTO).expect("parses");
        assert_eq!(f.len(), 2);
        assert!(f.verify("alice", b"secret"));
        assert!(!f.verify("alice", b"Secret"));
        assert!(f.verify("bob", b"hunter2"));
        assert!(!f.verify("bob", b""));
        assert!(!f.verify("carol", b"secret"));
    }

    #[test]
    fn round_trip_of_new_hashes() {
        let mut f = PasswordFile::default();
        f.set("carol", b"pw").expect("set");
        let text = f.render();
        assert!(text.starts_with("carol:$7$101$"));
        let g = PasswordFile::parse(&text).expect("parses");
        assert!(g.verify("carol", b"pw"));
        assert!(!g.verify("carol", b"pw2"));
        let mut g = g;
        assert!(g.remove("carol"));
        assert!(g.is_empty());
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let no_salt_7 = format!("a:$7$101$${}\n", B64.encode([0u8; 64]));
        let no_salt_6 = format!("# x\n\na:$6$${}\n", B64.encode([0u8; 64]));
        for (text, line) in [
            ("# c\nalice\n", 2),
            ("alice:plain\n", 1),
            ("\nx:$7$0$AAAA$AAAA\n", 2),
            ("x:$7$10$!!$AAAA\n", 1),
            (":$6$AAAA$AAAA\n", 1),
            // An empty or short hash would accept any (or one in 256) password.
            ("admin:$7$101$c2FsdA==$\n", 1),
            ("admin:$7$101$c2FsdA==$AA==\n", 1),
            ("a:$6$c2FsdA==$\n", 1),
            // An empty salt.
            (no_salt_7.as_str(), 1),
            (no_salt_6.as_str(), 3),
        ] {
            let e = PasswordFile::parse(text).expect_err(text);
            assert_eq!(e.0, line, "{text:?}: {}", e.1);
        }
    }
}
