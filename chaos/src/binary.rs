//! The `berth` binary the current build made. Tests and chaos runs use it through here, and
//! refuse one older than the sources it is built from, so they never test a stale build.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The newest modification time of the sources `berth` is built from under `root`.
fn newest_source(root: &Path) -> Option<SystemTime> {
    let mut newest: Option<SystemTime> = None;
    let mut consider = |p: &Path| {
        if let Ok(t) = std::fs::metadata(p).and_then(|m| m.modified()) {
            newest = Some(newest.map_or(t, |n| n.max(t)));
        }
    };
    consider(&root.join("Cargo.toml"));
    consider(&root.join("Cargo.lock"));
    let mut dirs: Vec<PathBuf> = ["proto", "api", "raft-store", "node"].iter().map(|d| root.join(d)).collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "tests" && n != "target") {
                    dirs.push(p);
                }
            } else if p.extension().is_some_and(|e| e == "rs" || e == "proto" || e == "toml") {
                consider(&p);
            }
        }
    }
    newest
}

/// `BERTH_BIN` if set, else `berth` in the target directory of the running test executable;
/// panics if it is missing or older than the workspace's sources (`workspace_root`).
pub fn current_berth(workspace_root: &Path) -> PathBuf {
    if let Ok(p) = std::env::var("BERTH_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe.parent().and_then(Path::parent).expect("target directory").join("berth");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).unwrap_or_else(|_| {
        panic!("{} is not built; run `cargo test --workspace` (it builds the binary first)", bin.display())
    });
    if let Some(newest) = newest_source(workspace_root) {
        assert!(
            built >= newest,
            "{} is older than the sources; run `cargo test --workspace` or `cargo build -p berth-node` so tests run the current build",
            bin.display()
        );
    }
    bin
}
