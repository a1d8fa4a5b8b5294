//! The whole stack in this process on loopback ports: the engine, the auth,
//! order, payment, product, cart and checkout services on ports the OS
//! picks, each pointed at the others, and the edge proxy in front with its
//! pools pointed at them. The demo and the black-box tests run on it;
//! `flashmall up` runs the same components on configured ports instead.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use flashmall_engine::config::{EngineConfig, LedgerConfig, RedisConfig};
use flashmall_mesh::{ClientConfig, IdentityKey, MeshTls, Shutdown, TlsConfig};
use flashmall_proxy::config::ProxyConfig;
use flashmall_proxy::{ProxySettings, RunningProxy};
use flashmall_services::config::{
    AuthConfig, CartConfig, CheckoutConfig, OrdersConfig, PaymentsConfig, ProductsConfig,
    StoreConfig,
};
use flashmall_services::store::ServiceStore;
use flashmall_services::{
    AuthSettings, CartSettings, CheckoutSettings, Common, OrdersSettings, PaymentsSettings,
    ProductsSettings, Service,
};
use tokio::net::TcpListener;

/// What the stack runs with.
#[derive(Debug, Clone)]
pub struct StackConfig {
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
    pub client: ClientConfig,
    pub data_dir: PathBuf,
    pub jwt_secret: Vec<u8>,
    /// Mutual TLS per component (`edge`, `engine`, `auth`, …): each gets
    /// its own certificate files. Empty: plain loopback, like `flashmall up`.
    pub tls: HashMap<String, TlsConfig>,
}

/// A running stack.
pub struct Stack {
    pub engine: flashmall_engine::Running,
    /// The order service (tests stop and restart it).
    pub orders: flashmall_services::Running,
    /// The other services, by name.
    pub services: Vec<(&'static str, flashmall_services::Running)>,
    pub proxy: RunningProxy,
    /// The services' store (shared by every service).
    pub store: Arc<dyn ServiceStore>,
    /// What the proxy runs with (another replica can be started from it).
    pub proxy_settings: ProxySettings,
    /// What the order service runs with (another replica can be started).
    pub orders_settings: OrdersSettings,
    /// Stops the engine and the services.
    pub shutdown: Shutdown,
    /// Stops the order service alone (tests stop and restart it).
    pub orders_shutdown: Shutdown,
}

/// A throwaway stack for the demo and the bench: embedded stores in a
/// temporary directory, a random JWT secret, and no per-address rate
/// limit (every simulated client shares one address). Its admin comes from
/// `Stack::register_admin`.
#[derive(Debug, Clone)]
pub struct Throwaway {
    /// Redis URL of the stock front; `None`: the in-process front.
    pub redis: Option<String>,
    /// Answer purchases right after the Redis script (no durable ack).
    pub fast_ack: bool,
    /// Largest quantity of one purchase.
    pub max_quantity: i64,
    /// How long an order waits for its payment.
    pub payment_timeout: std::time::Duration,
}

impl Throwaway {
    /// Starts it; the stack's data lives as long as the returned directory.
    pub async fn start(&self) -> Result<(Stack, tempfile::TempDir), String> {
        let data = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
        let jwt_secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
        .into_bytes();
        let config = StackConfig {
            engine: EngineConfig {
                durable_ack: !self.fast_ack,
                max_quantity: self.max_quantity.max(1),
                ..EngineConfig::default()
            },
            redis: RedisConfig {
                url: self.redis.clone().unwrap_or_default(),
                pool_size: 8,
                ..RedisConfig::default()
            },
            ledger: LedgerConfig::default(),
            store: StoreConfig::default(),
            orders: OrdersConfig {
                payment_timeout: self.payment_timeout,
                sweep_interval: std::time::Duration::from_millis(200),
                ..OrdersConfig::default()
            },
            payments: PaymentsConfig::default(),
            products: ProductsConfig::default(),
            cart: CartConfig::default(),
            checkout: CheckoutConfig::default(),
            client: ClientConfig::default(),
            auth: AuthConfig {
                // A light argon2id cost, so thousands of accounts register
                // in seconds; deployments keep the OWASP defaults of [auth].
                argon2_memory_kib: 256,
                argon2_iterations: 1,
                ..AuthConfig::default()
            },
            data_dir: data.path().to_owned(),
            jwt_secret,
            tls: HashMap::new(),
        };
        // The bench and the demo register and log in thousands of buyers
        // from one address: only the per-user and per-sale limits stay.
        let stack = Stack::start(config, |proxy| {
            proxy.limits.retain(|l| l.key == "user" || l.key == "sale")
        })
        .await?;
        Ok((stack, data))
    }
}

async fn bind() -> Result<TcpListener, String> {
    flashmall_mesh::serve::listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| e.to_string())
}

fn addr(listener: &TcpListener) -> Result<String, String> {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .map_err(|e| e.to_string())
}

impl Stack {
    /// Starts the components, then the proxy: on a free loopback port, with
    /// no grace period, its pools pointed at the components, and then
    /// adjusted by `tweak` (which may add pools, routes or limits).
    pub async fn start(
        mut config: StackConfig,
        tweak: impl FnOnce(&mut ProxyConfig),
    ) -> Result<Stack, String> {
        let identity = IdentityKey::random();
        let shutdown = Shutdown::new();
        let orders_shutdown = shutdown.child();
        // Every listener first: each component is told where the others are.
        let mut listeners = Vec::new();
        for name in [
            "engine", "auth", "orders", "payments", "products", "cart", "checkout",
        ] {
            let listener = bind().await?;
            listeners.push((name, addr(&listener)?, listener));
        }
        let at = |name: &str| -> Vec<String> {
            listeners
                .iter()
                .filter(|l| l.0 == name)
                .map(|l| l.1.clone())
                .collect()
        };
        config.engine.order_endpoints = at("orders");
        config.orders.engine_endpoints = at("engine");
        config.orders.product_endpoints = at("products");
        config.payments.order_endpoints = at("orders");
        config.cart.product_endpoints = at("products");
        config.checkout.product_endpoints = at("products");
        config.checkout.cart_endpoints = at("cart");
        config.checkout.order_endpoints = at("orders");
        config.checkout.payment_endpoints = at("payments");
        let mut proxy = ProxyConfig {
            // Port 0: a port taken at launch, not before the components start.
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            grace_period: std::time::Duration::ZERO,
            ..ProxyConfig::default()
        };
        for (pool, addr, _) in &listeners {
            proxy.upstreams.insert((*pool).into(), vec![addr.clone()]);
        }
        let mut listeners = listeners.into_iter().map(|(_, _, l)| l);
        let mut next = || listeners.next().ok_or("a listener is missing".to_owned());
        let mut tls = HashMap::new();
        for (component, files) in &config.tls {
            tls.insert(component.as_str(), MeshTls::load(files).await?);
        }
        let tls_of = |component: &str| tls.get(component).cloned();
        let engine_settings = flashmall_engine::Settings {
            engine: config.engine,
            redis: config.redis,
            ledger: config.ledger,
            data_dir: config.data_dir.clone(),
            identity: identity.clone(),
            client: config.client.clone(),
            tls: tls_of("engine"),
            admin_listen: None,
        };
        let engine = flashmall_engine::launch(&engine_settings, next()?, shutdown.clone()).await?;
        let common = Common {
            store: config.store,
            data_dir: config.data_dir,
            identity: identity.clone(),
            client: config.client,
            tls: None,
            admin_listen: None,
        };
        let store = flashmall_services::open_store(&common.store, &common.data_dir).await?;
        let orders_settings = OrdersSettings {
            orders: config.orders,
            common: Common {
                tls: tls_of("orders"),
                ..common.clone()
            },
        };
        let mut services = [
            Service::Auth(AuthSettings {
                auth: config.auth,
                common: common.clone(),
                jwt_secret: config.jwt_secret.clone(),
            }),
            Service::Orders(orders_settings.clone()),
            Service::Payments(PaymentsSettings {
                payments: config.payments,
                common: common.clone(),
            }),
            Service::Products(ProductsSettings {
                products: config.products,
                common: common.clone(),
            }),
            Service::Cart(CartSettings {
                cart: config.cart,
                common: common.clone(),
            }),
            Service::Checkout(CheckoutSettings {
                checkout: config.checkout,
                common,
            }),
        ];
        for service in &mut services {
            let name = service.name();
            service.common_mut().tls = tls_of(name);
        }
        let mut orders = None;
        let mut others = Vec::new();
        for service in &services {
            let stop = match service {
                Service::Orders(_) => orders_shutdown.clone(),
                _ => shutdown.clone(),
            };
            let running = service.launch(Arc::clone(&store), next()?, stop)?;
            match service {
                Service::Orders(_) => orders = Some(running),
                _ => others.push((service.name(), running)),
            }
        }
        let orders = orders.ok_or("the order service did not start")?;
        tweak(&mut proxy);
        let proxy_settings = ProxySettings {
            proxy,
            jwt_secret: config.jwt_secret,
            identity,
            tls: tls_of("edge"),
        };
        let proxy = flashmall_proxy::launch(&proxy_settings).await?;
        Ok(Stack {
            engine,
            orders,
            services: others,
            proxy,
            store,
            proxy_settings,
            orders_settings,
            shutdown,
            orders_shutdown,
        })
    }

    /// Registers `email` through the edge (if it is not yet) and makes it
    /// an admin, as an operator would with `flashmall grant-admin`.
    pub async fn register_admin(&self, email: &str, password: &str) -> Result<(), String> {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1/auth/register", self.base()))
            .json(&serde_json::json!({"email": email, "password": password}))
            .send()
            .await
            .map_err(|e| format!("registering {email}: {e}"))?;
        let status = response.status();
        if !matches!(status.as_u16(), 201 | 409) {
            return Err(format!(
                "registering {email}: {status} {}",
                response.text().await.unwrap_or_default()
            ));
        }
        flashmall_services::auth::grant_admin(&*self.store, email)
            .await
            .map(|_| ())
            .map_err(|e| e.message)
    }

    /// The edge's base URL.
    pub fn base(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    /// The edge's admin base URL (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_base(&self) -> String {
        format!("http://{}", self.proxy.admin_addr)
    }

    /// Stops the proxy, then the components, and waits for them.
    pub async fn stop(self) {
        self.proxy.stop().await;
        self.shutdown.trigger();
        let _ = self.engine.served.await;
        let _ = self.orders.served.await;
        for (_, running) in self.services {
            let _ = running.served.await;
        }
    }
}
