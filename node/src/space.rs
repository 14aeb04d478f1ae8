//! The free-space guard: refuses writes that would eat into a reserve of free disk, so the
//! Raft log and the blob store never meet a full disk. openraft stops its core for good on a
//! storage error, which would turn a full disk into a node that answers nothing; with the
//! reserve, a full disk only refuses new pushes (507), reads keep working, and writes resume
//! by themselves once space returns.

use std::path::{Path, PathBuf};

use berth_api::{BlobError, MetaError};
use berth_proto::Command;

/// Free space kept on a set of filesystems.
#[derive(Clone, Debug, Default)]
pub struct SpaceGuard {
    paths: Vec<PathBuf>,
    reserve: u64,
}

/// Bytes available to an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a valid out-pointer for the call's duration.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

impl SpaceGuard {
    /// Keeps `reserve` bytes free on each filesystem holding one of `paths`.
    pub fn new(paths: Vec<PathBuf>, reserve: u64) -> Self {
        SpaceGuard { paths, reserve }
    }

    /// `Err` with a message naming the path when one of them is below the reserve.
    pub fn check(&self) -> Result<(), String> {
        for p in &self.paths {
            let free = free_bytes(p).map_err(|e| format!("free space of {}: {e}", p.display()))?;
            if free < self.reserve {
                return Err(format!(
                    "only {} MiB free on {} (berth.limits.diskreserve keeps {} MiB)",
                    free >> 20,
                    p.display(),
                    self.reserve >> 20
                ));
            }
        }
        Ok(())
    }

    /// Refuses a metadata command that adds data while space is short. Deletes stay allowed:
    /// they are how an operator makes room.
    pub fn admit(&self, command: &Command) -> Result<(), MetaError> {
        match command {
            Command::LinkBlob { .. } | Command::PutManifest { .. } | Command::PutStoredManifest { .. } => self.check().map_err(MetaError::Full),
            _ => Ok(()),
        }
    }

    /// For bytes already streaming in: fails once an upload has eaten half the reserve, so one
    /// large push started just above the reserve cannot take the disk down to nothing.
    pub fn check_streaming(&self) -> std::io::Result<()> {
        for p in &self.paths {
            let free = free_bytes(p)?;
            if free < self.reserve / 2 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("only {} MiB free on {} while receiving an upload", free >> 20, p.display()),
                ));
            }
        }
        Ok(())
    }

    /// Refuses new upload bytes while space is short.
    pub fn admit_upload(&self) -> Result<(), BlobError> {
        self.check().map_err(BlobError::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_above_free_space_refuses_additions_but_not_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let roomy = SpaceGuard::new(vec![dir.path().to_path_buf()], 0);
        assert!(roomy.check().is_ok());
        let tight = SpaceGuard::new(vec![dir.path().to_path_buf()], u64::MAX);
        let repo = berth_proto::RepoName::parse("a/b").unwrap();
        let digest = berth_proto::Digest::sha256_of(b"x");
        assert!(matches!(tight.admit(&Command::LinkBlob { repo: repo.clone(), digest: digest.clone(), size: 1 }), Err(MetaError::Full(_))));
        assert!(tight.admit(&Command::UnlinkBlob { repo, digest }).is_ok());
        assert!(matches!(tight.admit_upload(), Err(BlobError::Full(_))));
    }
}
