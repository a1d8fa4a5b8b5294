//! The flashmall config file: one TOML file, a section per component, every
//! field defaulted. Any field can be overridden by an environment variable
//! `FLASHMALL_<SECTION>__<FIELD>` (e.g. `FLASHMALL_REDIS__URL`); values are
//! read as the field's type (lists: comma-separated). `validate` runs right
//! after loading, and every message names the field at fault.

use std::path::{Path, PathBuf};

use flashmall_engine::config::{EngineConfig, LedgerConfig, RedisConfig};
use flashmall_mesh::telemetry::LogFormat;
use flashmall_mesh::trace::{self, TraceSettings};
use flashmall_mesh::{IdentityKey, MeshConfig};
use flashmall_proxy::config::ProxyConfig;
use flashmall_services::config::{
    AuthConfig, CartConfig, CheckoutConfig, OrdersConfig, PaymentsConfig, ProductsConfig,
    StoreConfig,
};
use serde::{Deserialize, Serialize};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "FLASHMALL_";

/// `[log]`: log output of every component.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human-readable) or `json` (one object per line, for production).
    pub format: LogFormat,
    /// Filter directive, e.g. `info` or `flashmall_engine=debug,info`.
    pub level: String,
    /// OTLP/gRPC endpoint spans are exported to, plain `http://`, e.g.
    /// `http://otel-collector:4317`; empty: `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// if set, else no traces.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans; empty: `OTEL_SERVICE_NAME` if
    /// set, else `flashmall-<command>` (`flashmall-engine`, `flashmall-up`).
    pub service_name: String,
    /// Share of new traces exported, 0.0 to 1.0 (a trace a storefront
    /// started keeps its own `sampled` flag).
    pub trace_sample_ratio: f64,
}

impl LogConfig {
    /// Where spans go, if anywhere: the config's endpoint, else the
    /// standard variable in `env`; `command` names the service by default.
    pub fn traces(&self, command: &str, env: &[(String, String)]) -> Option<TraceSettings> {
        let from_env = |name: &str| {
            env.iter()
                .find(|(k, v)| k == name && !v.trim().is_empty())
                .map(|(_, v)| v.trim().to_owned())
        };
        let endpoint = match self.otlp_endpoint.trim() {
            "" => from_env(trace::OTEL_ENDPOINT_ENV)?,
            endpoint => endpoint.to_owned(),
        };
        let service_name = match self.service_name.trim() {
            "" => from_env(trace::OTEL_SERVICE_NAME_ENV)
                .unwrap_or_else(|| format!("flashmall-{command}")),
            name => name.to_owned(),
        };
        Some(TraceSettings {
            endpoint,
            service_name,
            sample_ratio: self.trace_sample_ratio,
        })
    }

    fn validate(&self) -> Result<(), String> {
        if self.level.trim().is_empty() {
            return Err("log.level must not be empty".into());
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(format!(
                "log.trace_sample_ratio must be within 0.0 and 1.0, not {}",
                self.trace_sample_ratio
            ));
        }
        // Plain OTLP/gRPC, to a collector in the cluster (the k8s overlay's):
        // the exporter is built without TLS.
        let endpoint = self.otlp_endpoint.trim();
        if !(endpoint.is_empty() || endpoint.starts_with("http://")) {
            return Err(format!(
                "log.otlp_endpoint must be an http:// URL of an OTLP/gRPC receiver \
                 (e.g. http://otel-collector:4317), not {endpoint:?}"
            ));
        }
        Ok(())
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
            otlp_endpoint: String::new(),
            service_name: String::new(),
            trace_sample_ratio: 1.0,
        }
    }
}

/// `[data]`: where the embedded stores keep their files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Directory of the embedded stores' files.
    pub dir: PathBuf,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dir: PathBuf::from("flashmall-data"),
        }
    }
}

/// The whole config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub data: DataConfig,
    pub mesh: MeshConfig,
    pub proxy: ProxyConfig,
    pub engine: EngineConfig,
    pub redis: RedisConfig,
    pub ledger: LedgerConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub orders: OrdersConfig,
    pub payments: PaymentsConfig,
    pub products: ProductsConfig,
    pub cart: CartConfig,
    pub checkout: CheckoutConfig,
}

/// What a printed configuration shows instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// A URL with the password of its user part (`scheme://user:password@host`)
/// replaced by [`REDACTED`].
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{REDACTED}@{host}"),
        None => url.to_owned(),
    }
}

impl Config {
    /// The configuration with its secrets hidden, for printing: the JWT
    /// secret, the mesh identity key, the store password and any password
    /// in a Redis URL. Empty ones stay empty (so a missing secret shows).
    pub fn redacted(&self) -> Config {
        let hide = |secret: &str| {
            if secret.is_empty() {
                String::new()
            } else {
                REDACTED.to_owned()
            }
        };
        let mut shown = self.clone();
        shown.auth.jwt_secret = hide(&self.auth.jwt_secret);
        shown.mesh.identity_key = hide(&self.mesh.identity_key);
        shown.store.password = hide(&self.store.password);
        shown.redis.url = redact_url(&self.redis.url);
        shown.proxy.redis_url = redact_url(&self.proxy.redis_url);
        shown
    }

    /// Loads `file` (or the defaults), applies `FLASHMALL_*` overrides from
    /// `env`, and validates. Tests pass their own `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, String> {
        let mut table =
            toml::Table::try_from(Config::default()).map_err(|e| format!("defaults: {e}"))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let file_table: toml::Table = toml::from_str(&text)
                .map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
            merge(&mut table, file_table);
        }
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        overrides.sort();
        for (name, raw) in overrides {
            apply_override(&mut table, &name, &raw)?;
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| format!("invalid configuration: {}", e.message()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every section.
    pub fn validate(&self) -> Result<(), String> {
        if self.data.dir.as_os_str().is_empty() {
            return Err("data.dir must not be empty".into());
        }
        self.log.validate()?;
        self.mesh.validate()?;
        self.proxy.validate()?;
        self.engine.validate()?;
        self.redis.validate()?;
        self.ledger.validate()?;
        self.store.validate()?;
        self.auth.validate()?;
        self.orders.validate()?;
        self.payments.validate()?;
        self.products.validate()?;
        self.cart.validate()?;
        self.checkout.validate()?;
        Ok(())
    }

    /// The proxy's settings; it verifies tokens with `jwt_secret` and signs
    /// identities with `identity`.
    pub fn proxy_settings(
        &self,
        identity: IdentityKey,
        jwt_secret: Vec<u8>,
    ) -> flashmall_proxy::ProxySettings {
        let mut proxy = self.proxy.clone();
        proxy.jwt_issuer = self.auth.issuer.clone();
        proxy.jwt_audience = self.auth.audience.clone();
        flashmall_proxy::ProxySettings {
            proxy,
            jwt_secret,
            identity,
            tls: None,
        }
    }

    /// The auth service's settings; `jwt_secret` signs its access tokens.
    pub fn auth_settings(
        &self,
        identity: IdentityKey,
        jwt_secret: Vec<u8>,
    ) -> flashmall_services::AuthSettings {
        flashmall_services::AuthSettings {
            auth: self.auth.clone(),
            common: self.service_common(identity),
            jwt_secret,
        }
    }

    /// The order service's settings.
    pub fn orders_settings(&self, identity: IdentityKey) -> flashmall_services::OrdersSettings {
        flashmall_services::OrdersSettings {
            orders: self.orders.clone(),
            common: self.service_common(identity),
        }
    }

    /// The payment service's settings.
    pub fn payments_settings(&self, identity: IdentityKey) -> flashmall_services::PaymentsSettings {
        flashmall_services::PaymentsSettings {
            payments: self.payments.clone(),
            common: self.service_common(identity),
        }
    }

    /// The product service's settings.
    pub fn products_settings(&self, identity: IdentityKey) -> flashmall_services::ProductsSettings {
        flashmall_services::ProductsSettings {
            products: self.products.clone(),
            common: self.service_common(identity),
        }
    }

    /// The cart service's settings.
    pub fn cart_settings(&self, identity: IdentityKey) -> flashmall_services::CartSettings {
        flashmall_services::CartSettings {
            cart: self.cart.clone(),
            common: self.service_common(identity),
        }
    }

    /// The checkout service's settings.
    pub fn checkout_settings(&self, identity: IdentityKey) -> flashmall_services::CheckoutSettings {
        flashmall_services::CheckoutSettings {
            checkout: self.checkout.clone(),
            common: self.service_common(identity),
        }
    }

    fn service_common(&self, identity: IdentityKey) -> flashmall_services::Common {
        flashmall_services::Common {
            store: self.store.clone(),
            data_dir: self.data.dir.clone(),
            identity,
            client: self.mesh.client.clone(),
            // Loaded by the caller (`MeshTls::load` reads files).
            tls: None,
            admin_listen: self.mesh.admin_addr().ok().flatten(),
        }
    }

    /// The configured JWT secret; required for a service run on its own.
    pub fn jwt_secret(&self) -> Result<Vec<u8>, String> {
        if self.auth.jwt_secret.is_empty() {
            return Err(
                "auth.jwt_secret must be set (32+ characters, e.g. FLASHMALL_AUTH__JWT_SECRET) \
                        when the auth service runs on its own"
                    .into(),
            );
        }
        Ok(self.auth.jwt_secret.clone().into_bytes())
    }

    /// The configured JWT secret, or a random one for a single-process stack.
    pub fn jwt_secret_or_random(&self) -> Vec<u8> {
        if self.auth.jwt_secret.is_empty() {
            let mut secret = uuid::Uuid::new_v4().simple().to_string().into_bytes();
            secret.extend_from_slice(uuid::Uuid::new_v4().simple().to_string().as_bytes());
            secret
        } else {
            self.auth.jwt_secret.clone().into_bytes()
        }
    }

    /// The engine's settings from this config, verifying identities with `identity`.
    pub fn engine_settings(&self, identity: IdentityKey) -> flashmall_engine::Settings {
        flashmall_engine::Settings {
            engine: self.engine.clone(),
            redis: self.redis.clone(),
            ledger: self.ledger.clone(),
            data_dir: self.data.dir.clone(),
            identity,
            client: self.mesh.client.clone(),
            tls: None,
            admin_listen: self.mesh.admin_addr().ok().flatten(),
        }
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Applies `FLASHMALL_SECTION__FIELD=raw`, typed by the field's default.
fn apply_override(table: &mut toml::Table, name: &str, raw: &str) -> Result<(), String> {
    let path: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_lowercase)
        .collect();
    if path.len() < 2 || path.iter().any(String::is_empty) {
        return Err(format!(
            "{name}: overrides are named FLASHMALL_<SECTION>__<FIELD>"
        ));
    }
    let (field, sections) = path
        .split_last()
        .ok_or_else(|| format!("{name}: empty override"))?;
    let mut at = &mut *table;
    for section in sections {
        at = match at.get_mut(section) {
            Some(toml::Value::Table(t)) => t,
            _ => {
                return Err(format!(
                    "{name}: there is no config section [{}]",
                    sections.join(".")
                ));
            }
        };
    }
    let current = at
        .get(field)
        .ok_or_else(|| format!("{name}: [{}] has no field {field:?}", sections.join(".")))?;
    let bad = |kind: &str| format!("{name}: {raw:?} is not {kind}");
    let value = match current {
        toml::Value::Integer(_) => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?)
        }
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(raw.trim().parse().map_err(|_| bad("true or false"))?)
        }
        toml::Value::Float(_) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?)
        }
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_owned()),
    };
    at.insert(field.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let path = flashmall_testing::package_dir().join("flashmall.example.toml");
        let c = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(c, Config::default(), "the example documents the defaults");
    }

    #[test]
    fn env_overrides_are_typed() {
        let c = Config::load(
            None,
            env(&[
                ("FLASHMALL_REDIS__URL", "redis://10.0.0.5:6379"),
                ("FLASHMALL_ENGINE__DURABLE_ACK", "false"),
                ("FLASHMALL_ENGINE__SETTLE_BATCH_SIZE", "64"),
                ("FLASHMALL_ENGINE__DURABLE_ACK_TIMEOUT", "2s"),
                ("FLASHMALL_LEDGER__PD_ENDPOINTS", "pd-0:2379, pd-1:2379"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.redis.url, "redis://10.0.0.5:6379");
        assert!(!c.engine.durable_ack);
        assert_eq!(c.engine.settle_batch_size, 64);
        assert_eq!(
            c.engine.durable_ack_timeout,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(c.ledger.pd_endpoints, vec!["pd-0:2379", "pd-1:2379"]);
    }

    #[test]
    fn traces_go_where_the_config_or_the_standard_variables_say() {
        let c = Config::default();
        assert_eq!(c.log.traces("engine", &env(&[])), None, "off by default");
        let standard = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SERVICE_NAME", "shop-edge"),
        ]);
        let t = c.log.traces("proxy", &standard).unwrap();
        assert_eq!(
            (t.endpoint.as_str(), t.service_name.as_str(), t.sample_ratio),
            ("http://collector:4317", "shop-edge", 1.0)
        );
        let c = Config::load(
            None,
            env(&[
                ("FLASHMALL_LOG__OTLP_ENDPOINT", "http://jaeger:4317"),
                ("FLASHMALL_LOG__TRACE_SAMPLE_RATIO", "0.25"),
            ]),
        )
        .unwrap();
        let t = c.log.traces("engine", &standard).unwrap();
        assert_eq!(
            (t.endpoint.as_str(), t.service_name.as_str(), t.sample_ratio),
            ("http://jaeger:4317", "shop-edge", 0.25)
        );
        assert_eq!(
            c.log.traces("engine", &env(&[])).unwrap().service_name,
            "flashmall-engine"
        );
        for (field, value, says) in [
            (
                "FLASHMALL_LOG__TRACE_SAMPLE_RATIO",
                "1.5",
                "log.trace_sample_ratio",
            ),
            (
                "FLASHMALL_LOG__OTLP_ENDPOINT",
                "collector:4317",
                "log.otlp_endpoint",
            ),
            (
                "FLASHMALL_LOG__OTLP_ENDPOINT",
                "https://c:4317",
                "log.otlp_endpoint",
            ),
        ] {
            let e = Config::load(None, env(&[(field, value)])).unwrap_err();
            assert!(e.contains(says), "{value}: {e}");
        }
    }

    #[test]
    fn bad_overrides_and_values_name_the_field() {
        let e = Config::load(None, env(&[("FLASHMALL_REDIS__NOPE", "1")])).unwrap_err();
        assert!(e.contains("FLASHMALL_REDIS__NOPE"), "{e}");
        let e = Config::load(
            None,
            env(&[("FLASHMALL_ENGINE__SETTLE_BATCH_SIZE", "many")]),
        )
        .unwrap_err();
        assert!(e.contains("not an integer"), "{e}");
        let e = Config::load(None, env(&[("FLASHMALL_REDIS__URL", "http://x")])).unwrap_err();
        assert!(e.contains("redis.url"), "{e}");
        let e = Config::load(None, env(&[("FLASHMALL_LEDGER__BACKEND", "tikv")])).unwrap_err();
        assert!(e.contains("pd_endpoints"), "{e}");
        let e = Config::load(
            None,
            env(&[("FLASHMALL_ENGINE__DURABLE_ACK_TIMEOUT", "soon")]),
        )
        .unwrap_err();
        assert!(e.contains("invalid configuration"), "{e}");
    }

    #[test]
    fn unknown_fields_in_the_file_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[engine]\ndurable_akc = true\n").unwrap();
        let e = Config::load(Some(&path), Vec::new()).unwrap_err();
        assert!(e.contains("durable_akc"), "{e}");
    }
}
