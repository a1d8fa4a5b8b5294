//! The Redis users of the production overlay
//! (`k8s/overlays/production/redis.yaml`), read from the manifest itself so
//! the tests run the exact rules that deploy.

/// Each user's rules (what follows `user NAME on PASSWORD`), by where
/// they are set.
#[derive(Debug, Clone, Default)]
pub struct ProductionAcl {
    /// The users of every Redis server (`redis.conf`).
    pub redis: Vec<(String, Vec<String>)>,
    /// The users of every Sentinel.
    pub sentinel: Vec<(String, Vec<String>)>,
}

impl ProductionAcl {
    /// Reads the manifest; panics with the line at fault on a surprise.
    pub fn load() -> ProductionAcl {
        // Found from the running test's package upwards.
        let start = crate::package_dir();
        let path = start
            .ancestors()
            .map(|dir| dir.join("k8s/overlays/production/redis.yaml"))
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "no k8s/overlays/production/redis.yaml above {}",
                    start.display()
                )
            });
        let text = std::fs::read_to_string(&path).expect("the production overlay's redis.yaml");
        Self::parse(&text)
    }

    fn parse(text: &str) -> ProductionAcl {
        let mut acl = ProductionAcl::default();
        for line in text.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("user ") else {
                continue;
            };
            let mut tokens = rest.split_whitespace();
            let (Some(name), Some(state)) = (tokens.next(), tokens.next()) else {
                panic!("a user line without a name and a state: {line}")
            };
            if name == "default" {
                assert_eq!(state, "off", "{line}");
                continue;
            }
            assert_eq!(state, "on", "{line}");
            // The password: `#@NAME@` (redis.conf, filled in at start) or
            // `#$(sha256 "$VAR")` (the sentinels' script), one or more tokens.
            let first = tokens.next().unwrap_or_default();
            let sentinel = first.starts_with("#$(");
            assert!(
                sentinel || first.starts_with("#@"),
                "no password placeholder: {line}"
            );
            let mut rules: Vec<String> = tokens.map(str::to_owned).collect();
            if sentinel && !first.ends_with(')') {
                let close = rules
                    .iter()
                    .position(|t| t.ends_with(')'))
                    .unwrap_or_else(|| panic!("an unclosed $(...): {line}"));
                rules.drain(..=close);
            }
            let list = if sentinel {
                &mut acl.sentinel
            } else {
                &mut acl.redis
            };
            list.push((name.to_owned(), rules));
        }
        assert!(
            !acl.redis.is_empty() && !acl.sentinel.is_empty(),
            "no users found in the production overlay"
        );
        acl
    }

    /// The rules of `user` on the Redis servers.
    pub fn redis_rules(&self, user: &str) -> Vec<String> {
        self.redis
            .iter()
            .find(|(name, _)| name == user)
            .map(|(_, rules)| rules.clone())
            .unwrap_or_else(|| panic!("no Redis user {user} in the production overlay"))
    }
}
