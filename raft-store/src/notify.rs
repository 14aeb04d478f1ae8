//! Notifications in the state: which endpoints events are kept for, how far each has received
//! them, and which events a change lets go. Used alike by the state on disk and the in-memory
//! model; each keeps the events themselves in its own way.

use std::ops::Range;

use berth_proto::notify::{NotifyChange, NotifyState, MAX_EVENTS};
use berth_proto::Outcome;

/// The events below the oldest any endpoint still needs go.
fn release(n: &mut NotifyState) -> Range<u64> {
    let from = n.first.max(1);
    let to = n.needed_from().max(from);
    n.first = to;
    from..to
}

/// Numbers the next event, if any endpoint is registered; with the range of events to drop
/// (the oldest, past [`MAX_EVENTS`]).
pub fn record(n: &mut NotifyState) -> Option<(u64, Range<u64>)> {
    if n.delivered.is_empty() {
        return None;
    }
    let seq = n.next.max(1);
    n.next = seq + 1;
    n.first = n.first.max(1);
    let from = n.first;
    let to = n.next.saturating_sub(MAX_EVENTS).max(from);
    n.first = to;
    Some((seq, from..to))
}

/// Applies a change; the outcome and the events it lets go.
pub fn apply(n: &mut NotifyState, change: &NotifyChange) -> (Outcome, Range<u64>) {
    // Events are numbered from 1; `next` is 0 until the first.
    let newest = n.next.max(1) - 1;
    match change {
        NotifyChange::Endpoints(names) => {
            let delivered = names.iter().map(|name| (name.clone(), n.delivered.get(name).copied().unwrap_or(newest))).collect();
            if delivered == n.delivered {
                return (Outcome::Unchanged, 0..0);
            }
            n.delivered = delivered;
            (Outcome::Done, release(n))
        }
        NotifyChange::Delivered { endpoint, through } => {
            let Some(d) = n.delivered.get_mut(endpoint) else { return (Outcome::NotFound, 0..0) };
            let through = (*through).min(newest);
            if through <= *d {
                return (Outcome::Unchanged, 0..0);
            }
            *d = through;
            (Outcome::Done, release(n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_kept_until_every_endpoint_has_them() {
        let mut n = NotifyState::default();
        assert_eq!(record(&mut n), None, "no endpoint, no event");
        assert_eq!(apply(&mut n, &NotifyChange::Endpoints(vec!["a".into()])).0, Outcome::Done);
        assert_eq!(record(&mut n), Some((1, 1..1)));
        assert_eq!(record(&mut n), Some((2, 1..1)));
        // A new endpoint starts after the newest event.
        assert_eq!(apply(&mut n, &NotifyChange::Endpoints(vec!["a".into(), "b".into()])), (Outcome::Done, 1..1));
        assert_eq!(n.delivered["b"], 2);
        assert_eq!(record(&mut n), Some((3, 1..1)));
        let delivered = |e: &str, through| NotifyChange::Delivered { endpoint: e.into(), through };
        // b has 3; a still needs 1..=3.
        assert_eq!(apply(&mut n, &delivered("b", 3)), (Outcome::Done, 1..1));
        // Beyond the newest is clamped; behind is ignored; an unknown endpoint is not found.
        assert_eq!(apply(&mut n, &delivered("a", 2)), (Outcome::Done, 1..3));
        assert_eq!(apply(&mut n, &delivered("a", 1)).0, Outcome::Unchanged);
        assert_eq!(apply(&mut n, &delivered("c", 1)).0, Outcome::NotFound);
        assert_eq!(apply(&mut n, &delivered("a", 99)), (Outcome::Done, 3..4));
        assert_eq!((n.delivered["a"], n.first, n.next), (3, 4, 4));
        // With no endpoint left everything goes, and nothing more is kept.
        record(&mut n);
        assert_eq!(apply(&mut n, &NotifyChange::Endpoints(vec![])), (Outcome::Done, 4..5));
        assert_eq!(record(&mut n), None);
    }
}
