//! GitLab's cleanup rules: which of a repository's tags a bulk delete or a cleanup policy
//! deletes.

use std::collections::HashMap;

use berth_proto::cleanup::CleanupPolicy;

/// The rules of one cleanup (GitLab's cleanup-tags service).
#[derive(Debug, Clone)]
pub struct Rules {
    /// Tags to delete (anchored), `name_regex_delete` or `name_regex`.
    pub delete: regex::Regex,
    /// Tags to keep whatever else holds (anchored), `name_regex_keep`.
    pub keep: Option<regex::Regex>,
    /// The newest this many candidates are kept.
    pub keep_n: Option<usize>,
    /// Only candidates older than this are deleted (ms).
    pub older_than_ms: Option<u64>,
}

fn anchored(re: &str) -> Result<regex::Regex, String> {
    // RE2 syntax, as GitLab's; the size limit keeps a hostile pattern from costing much.
    regex::RegexBuilder::new(&format!(r"\A(?:{re})\z"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regex {re:?}: {e}"))
}

/// Checks a pattern as a policy or bulk delete would use it.
pub fn check_regex(re: &str) -> Result<(), String> {
    anchored(re).map(|_| ())
}

/// A ChronicDuration as GitLab's `older_than` takes it: `90d`, `1h`, `2 weeks`, `1month`.
pub fn parse_age(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit_ms: u64 = match unit.trim().trim_end_matches('s') {
        "" | "sec" | "second" => 1_000,
        "m" | "min" | "minute" => 60_000,
        "h" | "hr" | "hour" => 3_600_000,
        "d" | "day" => 86_400_000,
        "w" | "week" => 7 * 86_400_000,
        "month" | "mo" => 30 * 86_400_000,
        "y" | "year" => 365 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

impl Rules {
    /// The rules from a bulk delete's parameters.
    pub fn from_params(p: &HashMap<String, String>) -> Result<Rules, String> {
        let delete = p.get("name_regex_delete").or_else(|| p.get("name_regex")).ok_or("name_regex_delete is missing")?;
        let keep_n = p.get("keep_n").map(|v| v.parse::<usize>().map_err(|_| "keep_n is invalid")).transpose()?;
        let older_than_ms = p.get("older_than").map(|v| parse_age(v).ok_or("older_than is invalid")).transpose()?;
        Ok(Rules { delete: anchored(delete)?, keep: p.get("name_regex_keep").map(|k| anchored(k)).transpose()?, keep_n, older_than_ms })
    }

    /// The rules of a policy; `None` when it names no tags to delete.
    pub fn from_policy(p: &CleanupPolicy) -> Result<Option<Rules>, String> {
        let Some(delete) = p.name_regex.as_deref().filter(|r| !r.is_empty()) else { return Ok(None) };
        Ok(Some(Rules {
            delete: anchored(delete)?,
            keep: p.name_regex_keep.as_deref().filter(|r| !r.is_empty()).map(anchored).transpose()?,
            keep_n: p.keep_n.map(|n| n as usize),
            older_than_ms: p.older_than.as_deref().map(|o| parse_age(o).ok_or_else(|| format!("older_than {o:?} is invalid"))).transpose()?,
        }))
    }

    /// The tags to delete among `tags` (name and creation time in ms, if known), at `now_ms`:
    /// never `latest`; those the delete pattern matches and the keep pattern does not; the
    /// newest `keep_n` of those spared (undated ones count as now); then only those older
    /// than `older_than` (undated ones spared).
    pub fn select(&self, tags: &[(String, Option<u64>)], now_ms: u64) -> Vec<String> {
        let mut candidates: Vec<&(String, Option<u64>)> = tags
            .iter()
            .filter(|(t, _)| t != "latest" && self.delete.is_match(t) && !self.keep.as_ref().is_some_and(|k| k.is_match(t)))
            .collect();
        candidates.sort_by(|a, b| b.1.unwrap_or(now_ms).cmp(&a.1.unwrap_or(now_ms)).then_with(|| a.0.cmp(&b.0)));
        candidates
            .into_iter()
            .skip(self.keep_n.unwrap_or(0))
            .filter(|(_, created)| match self.older_than_ms {
                Some(age) => created.is_some_and(|c| c.saturating_add(age) < now_ms),
                None => true,
            })
            .map(|(t, _)| t.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(delete: &str, keep: Option<&str>, keep_n: Option<usize>, older_than: Option<&str>) -> Rules {
        let mut p = HashMap::new();
        p.insert("name_regex_delete".to_string(), delete.to_string());
        if let Some(k) = keep {
            p.insert("name_regex_keep".into(), k.into());
        }
        if let Some(n) = keep_n {
            p.insert("keep_n".into(), n.to_string());
        }
        if let Some(o) = older_than {
            p.insert("older_than".into(), o.into());
        }
        Rules::from_params(&p).unwrap()
    }

    #[test]
    fn gitlabs_rules_keep_wins_newest_first_latest_never() {
        let day = 86_400_000;
        let now = 100 * day;
        let tags: Vec<(String, Option<u64>)> = vec![
            ("latest".into(), Some(0)),
            ("v1".into(), Some(now - 50 * day)),
            ("v2".into(), Some(now - 40 * day)),
            ("v3".into(), Some(now - 2 * day)),
            ("stable".into(), Some(0)),
            ("main-abc".into(), None),
            ("v1x".into(), Some(0)),
        ];
        // Anchored: `v.` matches v1, v2, v3 but not v1x.
        assert_eq!(rules("v.", None, None, None).select(&tags, now), vec!["v3", "v2", "v1"]);
        assert_eq!(rules(".*", Some("stable|v3"), None, None).select(&tags, now), vec!["main-abc", "v2", "v1", "v1x"]);
        // The newest two candidates stay (undated counts as now).
        assert_eq!(rules(".*", None, Some(2), None).select(&tags, now), vec!["v2", "v1", "stable", "v1x"]);
        // Only what is older than 30 days; undated is spared.
        assert_eq!(rules(".*", None, None, Some("30d")).select(&tags, now), vec!["v2", "v1", "stable", "v1x"]);
        assert_eq!(rules("v.*", Some("v1"), Some(1), Some("1month")).select(&tags, now), vec!["v2", "v1x"]);
        assert_eq!(parse_age("90d"), Some(90 * day));
        assert_eq!(parse_age("2 weeks"), Some(14 * day));
        assert_eq!(parse_age("1h"), Some(3_600_000));
        assert_eq!(parse_age("soon"), None);
        assert!(Rules::from_params(&HashMap::new()).is_err());
    }

    #[test]
    fn a_policy_without_a_delete_pattern_deletes_nothing() {
        let p = CleanupPolicy { name_regex: None, ..Default::default() };
        assert!(Rules::from_policy(&p).unwrap().is_none());
        let p = CleanupPolicy { name_regex: Some(String::new()), ..Default::default() };
        assert!(Rules::from_policy(&p).unwrap().is_none());
        let r = Rules::from_policy(&CleanupPolicy::default()).unwrap().unwrap();
        assert_eq!((r.keep_n, r.older_than_ms), (Some(10), Some(90 * 86_400_000)));
        assert!(Rules::from_policy(&CleanupPolicy { name_regex: Some("(".into()), ..Default::default() }).is_err());
        // A pattern that would compile to a huge program is refused, not run.
        assert!(check_regex("(a{1000}){1000}").is_err());
    }
}
