//! `auth.htpasswd`: users from an Apache htpasswd file of bcrypt hashes (`htpasswd -B`),
//! reread when the file changes. An unknown user costs the same bcrypt work as a wrong
//! password, so timing does not tell which names exist. Verified pairs are remembered (as a
//! keyed hash, never the password) until the file changes, so a push does not pay bcrypt on
//! each of its requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a verified pair is remembered, at most.
const REMEMBER: Duration = Duration::from_secs(300);
/// How many verified pairs are remembered, at most.
const REMEMBER_MAX: usize = 4096;
/// How often the file's metadata is looked at.
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Loaded {
    users: HashMap<String, String>,
    /// A hash of the same cost as the file's, checked for unknown users.
    decoy: String,
    stamp: Option<(SystemTime, u64)>,
    checked: Option<Instant>,
    verified: HashMap<[u8; 32], Instant>,
}

/// An htpasswd file and what was last read from it.
pub struct Htpasswd {
    path: PathBuf,
    key: [u8; 32],
    state: Mutex<Loaded>,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd").field("path", &self.path).finish()
    }
}

fn stamp(path: &Path) -> std::io::Result<(SystemTime, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified()?, m.len()))
}

fn parse(text: &str) -> Result<HashMap<String, String>, String> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line.split_once(':').ok_or_else(|| format!("line {}: not `user:hash`", i + 1))?;
        if !(hash.starts_with("$2y$") || hash.starts_with("$2a$") || hash.starts_with("$2b$")) {
            return Err(format!("line {}: user {user:?} has no bcrypt hash (create entries with `htpasswd -B`)", i + 1));
        }
        users.insert(user.to_string(), hash.to_string());
    }
    Ok(users)
}

fn cost_of(hash: &str) -> u32 {
    hash.get(4..6).and_then(|c| c.parse().ok()).unwrap_or(bcrypt::DEFAULT_COST)
}

impl Htpasswd {
    /// Reads the file; a missing or malformed file is an error (no default user is made).
    pub fn open(path: &Path) -> Result<Arc<Htpasswd>, String> {
        let h = Htpasswd { path: path.to_path_buf(), key: rand::random(), state: Mutex::new(Loaded::default()) };
        let mut st = Loaded::default();
        h.reload(&mut st)?;
        *h.state.lock().expect("htpasswd lock") = st;
        Ok(Arc::new(h))
    }

    fn reload(&self, st: &mut Loaded) -> Result<(), String> {
        let p = self.path.display();
        let s = stamp(&self.path).map_err(|e| format!("{p}: {e} (create it with `htpasswd -Bc {p} USER`)"))?;
        let text = std::fs::read_to_string(&self.path).map_err(|e| format!("{p}: {e}"))?;
        let users = parse(&text).map_err(|e| format!("{p}: {e}"))?;
        let cost = users.values().next().map_or(bcrypt::DEFAULT_COST, |h| cost_of(h));
        if st.decoy.is_empty() || cost_of(&st.decoy) != cost {
            st.decoy = bcrypt::hash(rand::random::<[u8; 16]>(), cost).map_err(|e| e.to_string())?;
        }
        st.users = users;
        st.stamp = Some(s);
        st.verified.clear();
        Ok(())
    }

    /// Looks at the file again if a second has passed; a file that became unreadable or
    /// malformed keeps the last good users (and says so).
    fn refresh(&self, st: &mut Loaded) {
        if st.checked.is_some_and(|c| c.elapsed() < RECHECK) {
            return;
        }
        st.checked = Some(Instant::now());
        if stamp(&self.path).ok() != st.stamp {
            match self.reload(st) {
                Ok(()) => tracing::info!(path = %self.path.display(), users = st.users.len(), "htpasswd file reread"),
                Err(e) => tracing::warn!("htpasswd file not reread, the last good copy stays in use: {e}"),
            }
        }
    }

    fn pair_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        m.update(user.as_bytes());
        m.update(&[0]);
        m.update(password.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// True when `user` is in the file with this password. Runs bcrypt on a blocking thread
    /// unless the pair was verified recently.
    pub async fn check(self: &Arc<Self>, user: &str, password: &str) -> bool {
        let key = self.pair_key(user, password);
        let hash = {
            let mut st = self.state.lock().expect("htpasswd lock");
            self.refresh(&mut st);
            if st.verified.get(&key).is_some_and(|t| t.elapsed() < REMEMBER) {
                return true;
            }
            match st.users.get(user) {
                Some(h) => Ok(h.clone()),
                None => Err(st.decoy.clone()),
            }
        };
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || match hash {
            Ok(h) => bcrypt::verify(password, &h).unwrap_or(false),
            Err(decoy) => {
                let _ = bcrypt::verify(password, &decoy);
                false
            }
        })
        .await
        .unwrap_or(false);
        if ok {
            let mut st = self.state.lock().expect("htpasswd lock");
            if st.verified.len() >= REMEMBER_MAX {
                st.verified.retain(|_, t| t.elapsed() < REMEMBER);
                if st.verified.len() >= REMEMBER_MAX {
                    st.verified.clear();
                }
            }
            st.verified.insert(key, Instant::now());
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_and_rereads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        assert!(Htpasswd::open(&p).unwrap_err().contains("htpasswd -Bc"));
        std::fs::write(&p, format!("alice:{}\n", bcrypt::hash("wonderland", 4).unwrap())).unwrap();
        let h = Htpasswd::open(&p).unwrap();
        assert!(h.check("alice", "wonderland").await);
        assert!(h.check("alice", "wonderland").await, "remembered");
        assert!(!h.check("alice", "wrong").await);
        assert!(!h.check("bob", "wonderland").await);
        // A new file: alice's old password stops working, bob's starts.
        std::fs::write(&p, format!("bob:{}\n# comment\n", bcrypt::hash("builder", 4).unwrap())).unwrap();
        h.state.lock().unwrap().checked = None;
        assert!(!h.check("alice", "wonderland").await);
        assert!(h.check("bob", "builder").await);
        // A broken file keeps the last good users.
        std::fs::write(&p, "bob:plaintext\n").unwrap();
        h.state.lock().unwrap().checked = None;
        assert!(h.check("bob", "builder").await);
        assert!(parse("x:{SHA}abc").unwrap_err().contains("bcrypt"));
    }
}
