//! A bounded map for caches: entries go into `young`; when its budget is spent it becomes
//! `old` (the previous `old` is dropped), and a hit in `old` moves the entry back to `young`.
//! Memory is bounded by twice a segment's budget, hot entries survive, and nothing needs a
//! recency list.

use std::collections::HashMap;
use std::hash::Hash;

/// One two-segment map, bounded by a budget of `cost` per segment.
pub struct Segments<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    young_cost: usize,
    budget: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Segments<K, V> {
    /// An empty map whose segments each hold up to `budget` of cost.
    pub fn new(budget: usize) -> Self {
        Segments { young: HashMap::new(), old: HashMap::new(), young_cost: 0, budget }
    }

    /// The value for `k`; a hit in the old segment moves it to the young one (`cost` prices it).
    pub fn get(&mut self, k: &K, cost: impl Fn(&V) -> usize) -> Option<V> {
        if let Some(v) = self.young.get(k) {
            return Some(v.clone());
        }
        let v = self.old.remove(k)?;
        self.insert(k.clone(), v.clone(), cost(&v));
        Some(v)
    }

    /// Adds `v` at `cost`, turning the young segment old once its budget would be exceeded.
    pub fn insert(&mut self, k: K, v: V, cost: usize) {
        if self.young_cost + cost > self.budget {
            self.old = std::mem::take(&mut self.young);
            self.young_cost = 0;
        }
        self.young_cost += cost;
        self.young.insert(k, v);
    }

    /// Drops `k`.
    pub fn remove(&mut self, k: &K) {
        self.young.remove(k);
        self.old.remove(k);
    }

    /// The budget of one segment.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
