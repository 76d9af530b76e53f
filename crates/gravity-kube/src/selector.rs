//! Label selectors: matching a structured selector (as PodDisruptionBudgets
//! carry) against labels, and writing equality selectors as query text.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `selector` selects an object with `labels`.
///
/// As for policy/v1 PodDisruptionBudgets: no selector selects nothing, an
/// empty selector selects everything. Unknown operators select nothing.
pub(crate) fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(s) = selector else {
        return false;
    };
    if let Some(ml) = &s.match_labels
        && !ml.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    for r in s.match_expressions.iter().flatten() {
        let value = labels.get(&r.key);
        let values = r.values.as_deref().unwrap_or_default();
        let ok = match r.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// `k1=v1,k2=v2`: the equality selector for `labels`.
pub(crate) fn equality(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn none_selects_nothing_and_empty_selects_everything() {
        let l = labels(&[("app", "web")]);
        assert!(!matches(None, &l));
        assert!(matches(Some(&LabelSelector::default()), &l));
    }

    #[test]
    fn match_labels_must_all_hold() {
        let s = LabelSelector {
            match_labels: Some(labels(&[("app", "web"), ("tier", "front")])),
            ..Default::default()
        };
        assert!(matches(
            Some(&s),
            &labels(&[("app", "web"), ("tier", "front"), ("x", "y")])
        ));
        assert!(!matches(Some(&s), &labels(&[("app", "web")])));
        assert!(!matches(
            Some(&s),
            &labels(&[("app", "db"), ("tier", "front")])
        ));
    }

    #[test]
    fn expressions() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let sel = |r: LabelSelectorRequirement| LabelSelector {
            match_expressions: Some(vec![r]),
            ..Default::default()
        };
        assert!(matches(Some(&sel(req("app", "In", &["web", "db"]))), &l));
        assert!(!matches(Some(&sel(req("app", "In", &["db"]))), &l));
        assert!(matches(Some(&sel(req("app", "NotIn", &["db"]))), &l));
        assert!(matches(Some(&sel(req("zone", "NotIn", &["a"]))), &l));
        assert!(!matches(Some(&sel(req("app", "NotIn", &["web"]))), &l));
        assert!(matches(Some(&sel(req("tier", "Exists", &[]))), &l));
        assert!(!matches(Some(&sel(req("zone", "Exists", &[]))), &l));
        assert!(matches(Some(&sel(req("zone", "DoesNotExist", &[]))), &l));
        assert!(!matches(Some(&sel(req("app", "Bogus", &["web"]))), &l));
    }

    #[test]
    fn equality_text() {
        assert_eq!(equality(&labels(&[("b", "2"), ("a", "1")])), "a=1,b=2");
        assert_eq!(equality(&BTreeMap::new()), "");
    }
}
