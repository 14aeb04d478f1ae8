//! Applies cleanup-policy changes in log order: saving a policy, and starting, recording and
//! ending its runs. Deterministic: times come from the command. Starting is a compare-and-set
//! on the due time, so a run due once starts once, whichever node proposes it and however often.

use std::collections::BTreeMap;

use berth_proto::cleanup::{CleanupChange, CleanupResult, CleanupRun, CleanupState};
use berth_proto::identity::Identity;
use berth_proto::Outcome;

/// Every project's policy, by project id.
pub type Policies = BTreeMap<u64, CleanupState>;

/// Applies one change at `at_ms`.
pub fn apply(policies: &mut Policies, identity: &Identity, change: &CleanupChange, at_ms: u64) -> Outcome {
    match change {
        CleanupChange::Set { project, policy, next_run_ms } => {
            if !identity.projects.contains_key(project) {
                return Outcome::NotFound;
            }
            let state = policies.entry(*project).or_insert_with(|| CleanupState {
                policy: policy.clone(),
                next_run_ms: None,
                run: None,
                last: None,
                runs: 0,
            });
            state.policy = policy.clone();
            state.next_run_ms = if policy.enabled { *next_run_ms } else { None };
            Outcome::Done
        }
        CleanupChange::Start { project, due_ms, next_run_ms } => {
            let Some(state) = policies.get_mut(project) else { return Outcome::NotFound };
            if !state.policy.enabled || state.next_run_ms != Some(*due_ms) || state.run.is_some() || *due_ms > at_ms {
                return Outcome::Unchanged;
            }
            state.run = Some(CleanupRun { started_ms: at_ms, done_through: None, repositories: 0, deleted: 0 });
            state.next_run_ms = Some(*next_run_ms);
            state.runs += 1;
            Outcome::Done
        }
        CleanupChange::Progress { project, started_ms, repository, deleted } => {
            let Some(run) = policies.get_mut(project).and_then(|s| s.run.as_mut()) else { return Outcome::Unchanged };
            if run.started_ms != *started_ms || run.done_through.as_ref().is_some_and(|d| d >= repository) {
                return Outcome::Unchanged;
            }
            run.done_through = Some(repository.clone());
            run.repositories += 1;
            run.deleted += deleted;
            Outcome::Done
        }
        CleanupChange::Finish { project, started_ms, error } => {
            let Some(state) = policies.get_mut(project) else { return Outcome::Unchanged };
            match state.run.take() {
                Some(run) if run.started_ms == *started_ms => {
                    state.last = Some(CleanupResult {
                        started_ms: run.started_ms,
                        finished_ms: at_ms,
                        repositories: run.repositories,
                        deleted: run.deleted,
                        error: error.clone(),
                    });
                    Outcome::Done
                }
                other => {
                    state.run = other;
                    Outcome::Unchanged
                }
            }
        }
    }
}

/// Drops the policies of projects that no longer exist (after an identity change); true if
/// any went.
pub fn forget_deleted_projects(policies: &mut Policies, identity: &Identity) -> bool {
    let before = policies.len();
    policies.retain(|p, _| identity.projects.contains_key(p));
    policies.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::cleanup::CleanupPolicy;
    use berth_proto::identity::{Project, Visibility};

    fn identity() -> Identity {
        let mut id = Identity::default();
        id.projects.insert(7, Project { id: 7, path: "g/p".into(), visibility: Visibility::Private, created_ms: 0 });
        id
    }

    #[test]
    fn a_due_run_starts_once_and_resumes_where_it_stopped() {
        let id = identity();
        let mut p = Policies::new();
        let enabled = CleanupPolicy { enabled: true, ..Default::default() };
        let set = |next| CleanupChange::Set { project: 7, policy: enabled.clone(), next_run_ms: Some(next) };
        assert_eq!(apply(&mut p, &id, &CleanupChange::Set { project: 8, policy: enabled.clone(), next_run_ms: Some(1) }, 0), Outcome::NotFound);
        assert_eq!(apply(&mut p, &id, &set(100), 0), Outcome::Done);
        let start = CleanupChange::Start { project: 7, due_ms: 100, next_run_ms: 200 };
        // Not yet due.
        assert_eq!(apply(&mut p, &id, &start, 99), Outcome::Unchanged);
        assert_eq!(apply(&mut p, &id, &start, 150), Outcome::Done);
        // Two proposers read the same due time: the second start is refused.
        assert_eq!(apply(&mut p, &id, &start, 151), Outcome::Unchanged);
        assert_eq!(p[&7].runs, 1);
        assert_eq!(p[&7].next_run_ms, Some(200));
        let progress = |repo: &str, started_ms| CleanupChange::Progress { project: 7, started_ms, repository: repo.into(), deleted: 2 };
        assert_eq!(apply(&mut p, &id, &progress("g/p/a", 150), 160), Outcome::Done);
        // A repeated record and one of another run change nothing.
        assert_eq!(apply(&mut p, &id, &progress("g/p/a", 150), 161), Outcome::Unchanged);
        assert_eq!(apply(&mut p, &id, &progress("g/p/b", 99), 161), Outcome::Unchanged);
        assert_eq!(apply(&mut p, &id, &progress("g/p/b", 150), 162), Outcome::Done);
        let run = p[&7].run.clone().unwrap();
        assert_eq!((run.done_through.as_deref(), run.repositories, run.deleted), (Some("g/p/b"), 2, 4));
        // While it runs, the next due time does not start a second run.
        assert_eq!(apply(&mut p, &id, &CleanupChange::Start { project: 7, due_ms: 200, next_run_ms: 300 }, 250), Outcome::Unchanged);
        assert_eq!(apply(&mut p, &id, &CleanupChange::Finish { project: 7, started_ms: 99, error: None }, 260), Outcome::Unchanged);
        assert_eq!(apply(&mut p, &id, &CleanupChange::Finish { project: 7, started_ms: 150, error: None }, 260), Outcome::Done);
        let last = p[&7].last.clone().unwrap();
        assert_eq!((last.finished_ms, last.deleted, last.repositories), (260, 4, 2));
        assert_eq!(apply(&mut p, &id, &CleanupChange::Start { project: 7, due_ms: 200, next_run_ms: 300 }, 270), Outcome::Done);
        // Disabling clears the schedule; no start is accepted.
        assert_eq!(apply(&mut p, &id, &CleanupChange::Set { project: 7, policy: CleanupPolicy::default(), next_run_ms: Some(1) }, 280), Outcome::Done);
        assert_eq!(p[&7].next_run_ms, None);
        assert_eq!(apply(&mut p, &id, &CleanupChange::Start { project: 7, due_ms: 1, next_run_ms: 2 }, 290), Outcome::Unchanged);
        assert!(!forget_deleted_projects(&mut p, &id));
        assert!(forget_deleted_projects(&mut p, &Identity::default()));
        assert!(p.is_empty());
    }
}
