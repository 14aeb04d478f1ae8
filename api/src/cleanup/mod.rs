//! Tag cleanup: GitLab's rules for which tags go ([`rules`]), a cleanup of one repository (a
//! bulk delete), and a cleanup policy's run over a project's repositories, recorded through
//! Raft as it goes so that any node can resume it. When a run is due and who starts it is the
//! node's scheduler's business; apply makes sure a due run starts once.

pub mod rules;

use std::time::Duration;

use berth_proto::cleanup::{CleanupChange, CleanupState};
use berth_proto::{Command, Outcome, RepoName, Tag};

pub use rules::{check_regex, parse_age, Rules};

use crate::backend::MetaError;
use crate::{inventory, Api};

/// Deletes the tags `rules` pick in `repo` (dated by their image config's `created`);
/// returns how many went.
pub async fn clean_repository(api: &Api, repo: &RepoName, rules: &Rules) -> Result<u64, MetaError> {
    let mut dated = Vec::new();
    for t in inventory::all_tags(api, repo).await? {
        if let Some(d) = inventory::details(api, repo, &t).await? {
            dated.push((t, d.created_ms()));
        }
    }
    let mut deleted = 0;
    for t in rules.select(&dated, berth_proto::now_ms()) {
        let Ok(tag) = Tag::parse(&t) else { continue };
        if api.meta.apply(Command::DeleteTag { repo: repo.clone(), tag }).await? == Outcome::Done {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// A test hook: `BERTH_TEST_CLEANUP_PAUSE_MS` waits that long after each repository of a
/// policy run, so that a test can stop a node in the middle of one. Unset in production.
fn pause() -> Option<Duration> {
    static PAUSE: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *PAUSE.get_or_init(|| std::env::var("BERTH_TEST_CLEANUP_PAUSE_MS").ok()?.parse().ok().map(Duration::from_millis))
}

/// What one call of [`continue_run`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Repositories cleaned.
    pub repositories: u64,
    /// Tags deleted.
    pub deleted: u64,
    /// Why the run ended early, if it did.
    pub error: Option<String>,
}

/// Carries forward the run `state` records for `project` (at `path`): each of its repositories
/// after the last one recorded is cleaned and then recorded (`CleanupChange::Progress`), and
/// the run ends (`Finish`). A cluster error (no leader, a timeout) returns with the run left
/// where it got to, for the next call, on this node or another, to resume. A policy that no
/// longer reads, or was disabled meanwhile, ends the run with that reason.
pub async fn continue_run(api: &Api, project: u64, path: &str, state: &CleanupState) -> Result<RunReport, MetaError> {
    let Some(run) = &state.run else { return Ok(RunReport::default()) };
    let started_ms = run.started_ms;
    let mut report = RunReport::default();
    let rules = Rules::from_policy(&state.policy);
    for name in inventory::repositories_of(api, path).await? {
        if run.done_through.as_ref().is_some_and(|d| *d >= name) {
            continue;
        }
        // The policy as the cluster has it now: a run that was ended or disabled stops here.
        let now = api.meta.cleanup_policies().await?;
        match now.get(&project) {
            Some(s) if s.run.as_ref().is_some_and(|r| r.started_ms == started_ms) => {
                if !s.policy.enabled {
                    report.error = Some("the policy was disabled during the run".into());
                    break;
                }
            }
            _ => return Ok(report),
        }
        let deleted = match (&rules, RepoName::parse(&name)) {
            (Ok(Some(rules)), Ok(repo)) => clean_repository(api, &repo, rules).await?,
            (Err(e), _) => {
                report.error = Some(e.clone());
                break;
            }
            _ => 0,
        };
        api.meta.apply(Command::Cleanup(CleanupChange::Progress { project, started_ms, repository: name.clone(), deleted })).await?;
        report.repositories += 1;
        report.deleted += deleted;
        tracing::info!(project, repository = %name, deleted, "cleanup policy cleaned a repository");
        if let Some(p) = pause() {
            tokio::time::sleep(p).await;
        }
    }
    api.meta.apply(Command::Cleanup(CleanupChange::Finish { project, started_ms, error: report.error.clone() })).await?;
    Ok(report)
}
