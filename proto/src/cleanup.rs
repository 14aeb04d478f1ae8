//! Cleanup policies (GitLab's container expiration policies): per project, which tags to
//! delete on a cadence, when the next run is due, the run in progress and the last result.
//! They are replicated state (protocol 5), so that a due run starts exactly once whichever
//! node leads, and a run cut short by a crash or a leader change resumes where it stopped.

use serde::{Deserialize, Serialize};

/// The values GitLab allows for a policy's `cadence`.
pub const CADENCES: [&str; 5] = ["1d", "7d", "14d", "1month", "3month"];
/// The values GitLab allows for `keep_n`.
pub const KEEP_N: [u32; 6] = [1, 5, 10, 25, 50, 100];
/// The values GitLab allows for `older_than`.
pub const OLDER_THAN: [&str; 4] = ["7d", "14d", "30d", "90d"];

/// A project's policy, as GitLab's `container_expiration_policy_attributes` set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupPolicy {
    /// Runs only when enabled.
    pub enabled: bool,
    /// How often: one of [`CADENCES`].
    pub cadence: String,
    /// The newest this many matching tags of each repository stay.
    pub keep_n: Option<u32>,
    /// Only tags older than this go: one of [`OLDER_THAN`].
    pub older_than: Option<String>,
    /// Tags to delete (anchored); none or empty deletes nothing.
    pub name_regex: Option<String>,
    /// Tags to keep whatever else holds (anchored).
    pub name_regex_keep: Option<String>,
}

impl Default for CleanupPolicy {
    /// What GitLab shows for a project that never set a policy.
    fn default() -> Self {
        CleanupPolicy {
            enabled: false,
            cadence: "1d".into(),
            keep_n: Some(10),
            older_than: Some("90d".into()),
            name_regex: Some(".*".into()),
            name_regex_keep: None,
        }
    }
}

/// A day in ms. A test hook, `BERTH_TEST_CLEANUP_DAY_MS`, shortens it for cadences (only for
/// the proposer's arithmetic: apply takes times from the command), so that tests see several
/// runs in seconds. Unset in production.
pub fn day_ms() -> u64 {
    static DAY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *DAY.get_or_init(|| std::env::var("BERTH_TEST_CLEANUP_DAY_MS").ok().and_then(|v| v.parse().ok()).filter(|&d| d > 0).unwrap_or(86_400_000))
}

impl CleanupPolicy {
    /// The cadence in ms (a month is 30 days), or `None` if it is not one of [`CADENCES`].
    pub fn cadence_ms(&self) -> Option<u64> {
        let days = match self.cadence.as_str() {
            "1d" => 1,
            "7d" => 7,
            "14d" => 14,
            "1month" => 30,
            "3month" => 90,
            _ => return None,
        };
        Some(days * day_ms())
    }

    /// Why the policy is not one GitLab would save, if it is not.
    pub fn invalid(&self) -> Option<String> {
        if !CADENCES.contains(&self.cadence.as_str()) {
            return Some(format!("cadence must be one of {}", CADENCES.join(", ")));
        }
        if self.keep_n.is_some_and(|n| !KEEP_N.contains(&n)) {
            return Some(format!("keep_n must be one of {KEEP_N:?}"));
        }
        if self.older_than.as_deref().is_some_and(|o| !OLDER_THAN.contains(&o)) {
            return Some(format!("older_than must be one of {}", OLDER_THAN.join(", ")));
        }
        None
    }
}

/// A run in progress: repositories are cleaned in name order, and each one finished is
/// recorded, so a run resumes after the last one recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupRun {
    /// When it started (ms since epoch); names the run in later changes.
    pub started_ms: u64,
    /// The last repository finished.
    pub done_through: Option<String>,
    /// Repositories finished.
    pub repositories: u64,
    /// Tags deleted so far.
    pub deleted: u64,
}

/// How the last run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupResult {
    /// When it started (ms since epoch).
    pub started_ms: u64,
    /// When it ended (ms since epoch).
    pub finished_ms: u64,
    /// Repositories it went through.
    pub repositories: u64,
    /// Tags it deleted.
    pub deleted: u64,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// A project's policy with its schedule and runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupState {
    /// The policy.
    pub policy: CleanupPolicy,
    /// When the next run is due (ms since epoch); none while disabled.
    pub next_run_ms: Option<u64>,
    /// The run in progress.
    pub run: Option<CleanupRun>,
    /// The last run that ended.
    pub last: Option<CleanupResult>,
    /// Runs started since the policy was first saved.
    pub runs: u64,
}

/// A change to cleanup policies (protocol 5). Times come from the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CleanupChange {
    /// Saves a project's policy and when it next runs (`NotFound` if there is no project).
    Set {
        /// The project.
        project: u64,
        /// The policy.
        policy: CleanupPolicy,
        /// When it next runs; none while disabled.
        next_run_ms: Option<u64>,
    },
    /// Starts the run due at `due_ms`, if that is still the policy's next run, it is enabled
    /// and nothing runs (`Unchanged` otherwise: another node started it, or the policy
    /// changed). The next run is then due at `next_run_ms`.
    Start {
        /// The project.
        project: u64,
        /// The due time the proposer read.
        due_ms: u64,
        /// The run after this one.
        next_run_ms: u64,
    },
    /// Records that the run started at `started_ms` finished `repository` (names sort after
    /// the last one recorded; an older or repeated record is `Unchanged`).
    Progress {
        /// The project.
        project: u64,
        /// The run.
        started_ms: u64,
        /// The repository finished.
        repository: String,
        /// Tags it deleted there.
        deleted: u64,
    },
    /// Ends the run started at `started_ms`.
    Finish {
        /// The project.
        project: u64,
        /// The run.
        started_ms: u64,
        /// Why it stopped early, if it did.
        error: Option<String>,
    },
}

impl CleanupChange {
    /// The project it concerns.
    pub fn project(&self) -> u64 {
        match self {
            CleanupChange::Set { project, .. }
            | CleanupChange::Start { project, .. }
            | CleanupChange::Progress { project, .. }
            | CleanupChange::Finish { project, .. } => *project,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gitlabs_values_are_valid() {
        assert_eq!(CleanupPolicy::default().invalid(), None);
        assert_eq!(CleanupPolicy::default().cadence_ms(), Some(86_400_000));
        let p = |f: fn(&mut CleanupPolicy)| {
            let mut p = CleanupPolicy::default();
            f(&mut p);
            p.invalid()
        };
        assert!(p(|p| p.cadence = "2d".into()).is_some());
        assert!(p(|p| p.keep_n = Some(3)).is_some());
        assert!(p(|p| p.older_than = Some("1d".into())).is_some());
        assert_eq!(p(|p| p.keep_n = None), None);
        assert_eq!(p(|p| p.cadence = "3month".into()), None);
    }
}
