//! Rules that select requests by method and path regex (public routes,
//! rate limits). Each request meets every rule of its method, so each rule
//! carries literal guards taken from its regex: a pattern anchored at the
//! start (`^`) matches only paths that begin with one of its prefix
//! literals, one anchored at the end (`$`) only paths that end with one of
//! its suffix literals. A path that fails a guard is not searched: a
//! purchase meets the seven default limits and five public routes, and
//! runs the one regex that can match it. (A `Regex` search per rule, or one
//! `RegexSet` pass over them all, was the largest part of the edge's own
//! time on a refused purchase.)

use regex::Regex;
use regex_syntax::hir::Look;
use regex_syntax::hir::literal::{ExtractKind, Extractor};

/// One rule's path: its regex, and the literals every match must begin or
/// end with (`None`: no such guard).
struct PathRule {
    method: String,
    /// `None`: every path.
    regex: Option<Regex>,
    prefixes: Option<Vec<Vec<u8>>>,
    suffixes: Option<Vec<Vec<u8>>>,
}

impl PathRule {
    fn new(method: &str, path: &str) -> Result<PathRule, String> {
        if path.is_empty() {
            return Ok(PathRule {
                method: method.to_owned(),
                regex: None,
                prefixes: None,
                suffixes: None,
            });
        }
        let regex = Regex::new(path).map_err(|e| e.to_string())?;
        let hir = regex_syntax::parse(path).map_err(|e| e.to_string())?;
        let guard = |kind: ExtractKind, anchored: bool| -> Option<Vec<Vec<u8>>> {
            if !anchored {
                return None;
            }
            let seq = Extractor::new().kind(kind).extract(&hir);
            let literals = seq.literals()?;
            Some(literals.iter().map(|l| l.as_bytes().to_vec()).collect())
        };
        let props = hir.properties();
        Ok(PathRule {
            method: method.to_owned(),
            prefixes: guard(
                ExtractKind::Prefix,
                props.look_set_prefix().contains(Look::Start),
            ),
            suffixes: guard(
                ExtractKind::Suffix,
                props.look_set_suffix().contains(Look::End),
            ),
            regex: Some(regex),
        })
    }

    fn matches(&self, path: &str) -> bool {
        let Some(regex) = &self.regex else {
            return true;
        };
        let bytes = path.as_bytes();
        let begins = |set: &Option<Vec<Vec<u8>>>| {
            set.as_ref()
                .is_none_or(|s| s.iter().any(|l| bytes.starts_with(l)))
        };
        let ends = |set: &Option<Vec<Vec<u8>>>| {
            set.as_ref()
                .is_none_or(|s| s.iter().any(|l| bytes.ends_with(l)))
        };
        begins(&self.prefixes) && ends(&self.suffixes) && regex.is_match(path)
    }
}

/// Rules in their configured order, each a method (or `*`), a path regex
/// (empty: every path) and what it selects the request for (a limit; `()`
/// for a public route).
pub struct PathRules<T>(Vec<(PathRule, T)>);

impl<T> PathRules<T> {
    /// `rules`: (method, path regex, what the rule carries).
    pub fn new<'a>(
        rules: impl IntoIterator<Item = (&'a str, &'a str, T)>,
    ) -> Result<PathRules<T>, String> {
        rules
            .into_iter()
            .map(|(method, path, item)| PathRule::new(method, path).map(|rule| (rule, item)))
            .collect::<Result<_, _>>()
            .map(PathRules)
    }

    /// What the rules carry, in order, for the rules whose method `wanted`
    /// accepts and whose path regex matches `path`.
    pub fn matching<'a>(
        &'a self,
        path: &'a str,
        wanted: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = &'a T> + 'a {
        self.0
            .iter()
            .filter(move |(rule, _)| wanted(&rule.method) && rule.matches(path))
            .map(|(_, item)| item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_by_method_and_path_in_their_order() {
        // Each rule carries its index.
        let rules = [
            ("*", ""),
            ("POST", "^/api/v1/auth/login$"),
            ("GET", "^/api/v1/products(/.*)?$"),
            ("*", "^/api/v1/sales/[^/]+/purchase$"),
            ("POST", "^/api/v1/sales/[^/]+/purchase$"),
            ("*", "/purchase$"),
            ("*", "^/API/v1/(?i)Orders$"),
            ("*", "^/api/v1/auth/(login|register)$|^/x"),
        ];
        let rules =
            PathRules::new(rules.iter().enumerate().map(|(i, (m, p))| (*m, *p, i))).unwrap();
        let matched = |method: &str, path: &str| -> Vec<usize> {
            rules
                .matching(path, |m| m == "*" || m.eq_ignore_ascii_case(method))
                .copied()
                .collect()
        };
        assert_eq!(matched("POST", "/api/v1/auth/login"), vec![0, 1, 7]);
        assert_eq!(matched("GET", "/api/v1/auth/login"), vec![0, 7]);
        assert_eq!(matched("GET", "/api/v1/auth/register"), vec![0, 7]);
        assert_eq!(matched("get", "/api/v1/products/7"), vec![0, 2]);
        assert_eq!(matched("GET", "/api/v1/products"), vec![0, 2]);
        assert_eq!(
            matched("POST", "/api/v1/sales/x/purchase"),
            vec![0, 3, 4, 5]
        );
        assert_eq!(matched("POST", "/api/v1/sales/x/purchase/more"), vec![0]);
        assert_eq!(matched("GET", "/shop/purchase"), vec![0, 5]);
        assert_eq!(matched("GET", "/API/v1/oRDERS"), vec![0, 6]);
        assert_eq!(matched("GET", "/api/v1/orders"), vec![0]);
        assert_eq!(matched("GET", "/x/anything"), vec![0, 7]);
        let none = PathRules::<()>::new([]).unwrap();
        assert_eq!(none.matching("/", |_| true).count(), 0);
        assert!(PathRules::new([("GET", "(", ())]).is_err());
    }

    #[test]
    fn guards_hold_only_what_every_match_must_have() {
        let rule = |p: &str| PathRule::new("*", p).unwrap();
        let purchase = rule("^/api/v1/sales/[^/]+/purchase$");
        assert_eq!(purchase.prefixes, Some(vec![b"/api/v1/sales/".to_vec()]));
        assert_eq!(purchase.suffixes, Some(vec![b"/purchase".to_vec()]));
        // Not anchored, or anchored in one branch only: no guard there.
        assert_eq!(rule("/purchase$").prefixes, None);
        assert_eq!(rule("^/a").suffixes, None);
        assert_eq!(rule("^/a|/b").prefixes, None);
        // A case-insensitive literal is not a guard by its one spelling.
        let folded = rule("^(?i)/api$");
        assert!(folded.matches("/API"));
        assert!(folded.matches("/aPi"));
    }
}
