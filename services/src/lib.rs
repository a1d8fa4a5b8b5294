//! flashmall's shop services. Each service is a module with its domain,
//! its JSON API and its gRPC API, served on one port; all keep their data
//! behind the services' store boundary (`store/`).
//!
//! - `auth/`: accounts, logins, token rotation, logout, roles.
//! - `orders/`: orders from flash-sale reservations, their expiry and
//!   cancellation.
//! - `payments/`: charges through a payment provider, refunds.
//! - `products/`: the catalogue (products, categories, search) and the
//!   stock holds of normal checkout.
//! - `cart/`: each buyer's cart.
//! - `checkout/`: a cart becomes a paid order.
//! - `timers.rs`: durable timers the orders and payments sweep.
//!
//! Depends on `flashmall-mesh` (identity, errors, serving, the client
//! stack), on `flashmall-proto`, and on the embedded KV for the embedded
//! store; never on the engine (it calls the engine over gRPC).

pub mod auth;
pub mod cart;
pub mod checkout;
pub mod config;
pub mod orders;
pub mod payments;
pub mod products;
pub mod store;
pub mod timers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use flashmall_mesh::{ClientConfig, IdentityKey, MeshClient, MeshTls, Readiness, Shutdown};
use tokio::net::TcpListener;

use auth::Auth;
use config::{
    AuthConfig, CartConfig, CheckoutConfig, OrdersConfig, PaymentsConfig, ProductsConfig,
    ProviderKind, StoreBackend, StoreConfig,
};
use orders::Orders;
use payments::Payments;
use products::Products;
use store::{EmbeddedStore, ScyllaStore, ServiceStore};

/// What every service runs with besides its own section.
#[derive(Debug, Clone)]
pub struct Common {
    pub store: StoreConfig,
    pub data_dir: PathBuf,
    /// Verifies the identity the edge signs, and signs this component's own.
    pub identity: IdentityKey,
    /// The client stack for calls to other components.
    pub client: ClientConfig,
    /// Mutual TLS on this component's port and its calls (`[mesh.tls]`).
    pub tls: Option<MeshTls>,
    /// Plain probes and metrics port when run on its own (`mesh.admin_listen`).
    pub admin_listen: Option<SocketAddr>,
}

impl Common {
    /// The same, verifying identities as `component` (those signed for
    /// another component are refused).
    pub fn for_component(&self, component: &str) -> Common {
        Common {
            identity: self.identity.for_component(component),
            ..self.clone()
        }
    }

    /// A client of component `name` at `endpoints`, over mutual TLS when
    /// this component has it.
    pub fn client(&self, name: &'static str, endpoints: &[String]) -> Result<MeshClient, String> {
        MeshClient::new(name, endpoints, &self.client, self.tls.as_ref())
    }
}

/// Everything the auth service needs to run.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub auth: AuthConfig,
    pub common: Common,
    /// Signs access tokens (HS256), shared with the edge.
    pub jwt_secret: Vec<u8>,
}

/// Everything the order service needs to run.
#[derive(Debug, Clone)]
pub struct OrdersSettings {
    pub orders: OrdersConfig,
    pub common: Common,
}

/// Everything the payment service needs to run.
#[derive(Debug, Clone)]
pub struct PaymentsSettings {
    pub payments: PaymentsConfig,
    pub common: Common,
}

/// Everything the product service needs to run.
#[derive(Debug, Clone)]
pub struct ProductsSettings {
    pub products: ProductsConfig,
    pub common: Common,
}

/// Everything the cart service needs to run.
#[derive(Debug, Clone)]
pub struct CartSettings {
    pub cart: CartConfig,
    pub common: Common,
}

/// Everything the checkout service needs to run.
#[derive(Debug, Clone)]
pub struct CheckoutSettings {
    pub checkout: CheckoutConfig,
    pub common: Common,
}

pub use flashmall_mesh::contract::rfc3339_ms;

/// Opens the configured services store; `data_dir` anchors a relative
/// embedded path.
pub async fn open_store(
    config: &StoreConfig,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn ServiceStore>, String> {
    match config.backend {
        StoreBackend::Embedded => {
            let path = if config.path.is_absolute() {
                config.path.clone()
            } else {
                data_dir.join(&config.path)
            };
            Ok(Arc::new(
                EmbeddedStore::open(&path).map_err(|e| e.to_string())?,
            ))
        }
        StoreBackend::Scylla => {
            Ok(Arc::new(ScyllaStore::connect(config).await.map_err(
                |e| format!("cannot open the scylla store: {e}"),
            )?))
        }
    }
}

/// A started service.
pub struct Running {
    pub addr: SocketAddr,
    pub served: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Serves a service's router on `listener`: identity verified once per
/// request, then the service's handlers.
fn serve(
    component: &'static str,
    app: axum::Router,
    key: &IdentityKey,
    common: &Common,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<Running, String> {
    let app = flashmall_mesh::verify_identity(app, key.clone());
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let served = tokio::spawn(flashmall_mesh::serve(
        component,
        listener,
        common.tls.clone(),
        app,
        Readiness::always(),
        shutdown,
    ));
    Ok(Running { addr, served })
}

/// Starts the auth service on `listener` until `shutdown`.
pub fn launch_auth(
    settings: &AuthSettings,
    store: Arc<dyn ServiceStore>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<Running, String> {
    let key = &settings.common.identity.for_component("auth");
    let auth = Arc::new(Auth::new(
        store,
        settings.auth.clone(),
        &settings.jwt_secret,
    )?);
    let bootstrap = Arc::clone(&auth);
    tokio::spawn(async move {
        for email in bootstrap.grant_bootstrap_admins().await {
            tracing::info!(email = %email, "bootstrap admin granted");
        }
    });
    let app = auth::http::router(Arc::clone(&auth), key.clone())
        .merge(auth::grpc::router(auth, key.clone()));
    serve("auth", app, key, &settings.common, listener, shutdown)
}

/// Starts the order service and its expiry worker on `listener` until
/// `shutdown`.
pub fn launch_orders(
    settings: &OrdersSettings,
    store: Arc<dyn ServiceStore>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<Running, String> {
    let common = &settings.common.for_component("orders");
    let engine = common.client("engine", &settings.orders.engine_endpoints)?;
    let products = common.client("products", &settings.orders.product_endpoints)?;
    let stock = Arc::new(orders::stock::MeshStock::new(
        engine,
        products,
        common.identity.clone(),
    ));
    let orders = Arc::new(Orders::new(store, stock, settings.orders.clone()));
    orders::sweep::spawn(Arc::clone(&orders), shutdown.clone());
    let app = orders::http::router(Arc::clone(&orders))
        .merge(orders::grpc::router(orders, common.identity.clone()));
    serve("orders", app, &common.identity, common, listener, shutdown)
}

/// Starts the payment service, its timer worker and its provider-callback
/// listener on `listener` until `shutdown`.
pub fn launch_payments(
    settings: &PaymentsSettings,
    store: Arc<dyn ServiceStore>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<Running, String> {
    let common = &settings.common.for_component("payments");
    let client = common.client("orders", &settings.payments.order_endpoints)?;
    let desk = Arc::new(payments::orders::GrpcOrders::new(
        client,
        common.identity.clone(),
    ));
    let (events, callbacks) = tokio::sync::mpsc::unbounded_channel();
    let provider: Arc<dyn payments::provider::PaymentProvider> = match settings.payments.provider {
        ProviderKind::Simulator => Arc::new(payments::provider::Simulator::new(
            settings.payments.simulator.clone(),
            events,
        )),
    };
    let payments = Arc::new(Payments::new(
        store,
        provider,
        desk,
        settings.payments.clone(),
    ));
    payments::sweep::spawn(Arc::clone(&payments), shutdown.clone());
    payments::sweep::listen(Arc::clone(&payments), callbacks, shutdown.clone());
    let app = payments::http::router(Arc::clone(&payments))
        .merge(payments::grpc::router(payments, common.identity.clone()));
    serve(
        "payments",
        app,
        &common.identity,
        common,
        listener,
        shutdown,
    )
}

/// Starts the product (catalogue) service on `listener` until `shutdown`.
pub fn launch_products(
    settings: &ProductsSettings,
    store: Arc<dyn ServiceStore>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<Running, String> {
    let key = &settings.common.identity.for_component("products");
    let products = Arc::new(Products::new(store, settings.products.clone()));
    let app = products::http::router(Arc::clone(&products))
        .merge(products::grpc::router(products, key.clone()));
    serve("products", app, key, &settings.common, listener, shutdown)
}

/// Starts the cart service on `listener` until `shutdown`.
pub fn launch_cart(
    settings: &CartSettings,
    store: Arc<dyn ServiceStore>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<Running, String> {
    let common = &settings.common.for_component("cart");
    let catalog = products::client::CatalogClient::new(
        common.client("products", &settings.cart.product_endpoints)?,
        common.identity.clone(),
        "cart",
    );
    let carts = Arc::new(cart::Carts::new(store, catalog, settings.cart.clone()));
    let app = cart::http::router(Arc::clone(&carts))
        .merge(cart::grpc::router(carts, common.identity.clone()));
    serve("cart", app, &common.identity, common, listener, shutdown)
}

/// Starts the checkout service on `listener` until `shutdown`.
pub fn launch_checkout(
    settings: &CheckoutSettings,
    store: Arc<dyn ServiceStore>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<Running, String> {
    let common = &settings.common.for_component("checkout");
    let c = &settings.checkout;
    let client = |name: &'static str, endpoints: &[String]| common.client(name, endpoints);
    let catalog = products::client::CatalogClient::new(
        client("products", &c.product_endpoints)?,
        common.identity.clone(),
        "checkout",
    );
    let peers = checkout::peers::Peers {
        cart: client("cart", &c.cart_endpoints)?,
        orders: client("orders", &c.order_endpoints)?,
        payments: client("payments", &c.payment_endpoints)?,
        key: common.identity.clone(),
    };
    let checkouts = Arc::new(checkout::Checkouts::new(
        store,
        catalog,
        peers,
        c.max_body_bytes,
    ));
    let app = checkout::http::router(Arc::clone(&checkouts))
        .merge(checkout::grpc::router(checkouts, common.identity.clone()));
    serve(
        "checkout",
        app,
        &common.identity,
        common,
        listener,
        shutdown,
    )
}

/// Which service `run` starts.
#[derive(Debug, Clone)]
pub enum Service {
    Auth(AuthSettings),
    Orders(OrdersSettings),
    Payments(PaymentsSettings),
    Products(ProductsSettings),
    Cart(CartSettings),
    Checkout(CheckoutSettings),
}

impl Service {
    /// The component's name.
    pub fn name(&self) -> &'static str {
        match self {
            Service::Auth(_) => "auth",
            Service::Orders(_) => "orders",
            Service::Payments(_) => "payments",
            Service::Products(_) => "products",
            Service::Cart(_) => "cart",
            Service::Checkout(_) => "checkout",
        }
    }

    /// The address its section says to serve on.
    pub fn listen(&self) -> SocketAddr {
        match self {
            Service::Auth(s) => s.auth.listen,
            Service::Orders(s) => s.orders.listen,
            Service::Payments(s) => s.payments.listen,
            Service::Products(s) => s.products.listen,
            Service::Cart(s) => s.cart.listen,
            Service::Checkout(s) => s.checkout.listen,
        }
    }

    /// What it shares with the other services (tests and `run` set the
    /// mesh's TLS here once loaded).
    pub fn common_mut(&mut self) -> &mut Common {
        match self {
            Service::Auth(s) => &mut s.common,
            Service::Orders(s) => &mut s.common,
            Service::Payments(s) => &mut s.common,
            Service::Products(s) => &mut s.common,
            Service::Cart(s) => &mut s.common,
            Service::Checkout(s) => &mut s.common,
        }
    }

    fn common(&self) -> &Common {
        match self {
            Service::Auth(s) => &s.common,
            Service::Orders(s) => &s.common,
            Service::Payments(s) => &s.common,
            Service::Products(s) => &s.common,
            Service::Cart(s) => &s.common,
            Service::Checkout(s) => &s.common,
        }
    }

    /// Starts it on `listener` over `store` until `shutdown`.
    pub fn launch(
        &self,
        store: Arc<dyn ServiceStore>,
        listener: TcpListener,
        shutdown: Shutdown,
    ) -> Result<Running, String> {
        match self {
            Service::Auth(s) => launch_auth(s, store, listener, shutdown),
            Service::Orders(s) => launch_orders(s, store, listener, shutdown),
            Service::Payments(s) => launch_payments(s, store, listener, shutdown),
            Service::Products(s) => launch_products(s, store, listener, shutdown),
            Service::Cart(s) => launch_cart(s, store, listener, shutdown),
            Service::Checkout(s) => launch_checkout(s, store, listener, shutdown),
        }
    }
}

impl Running {
    /// Waits for the server to stop; `name` labels its failure.
    pub async fn finished(self, name: &str) -> Result<(), String> {
        self.served
            .await
            .map_err(|e| format!("{name} server task failed: {e}"))?
            .map_err(|e| format!("{name} server failed: {e}"))
    }
}

/// Runs one service on its own until SIGTERM or `shutdown`.
pub async fn run(service: Service, shutdown: Shutdown) -> Result<(), String> {
    let (name, listen) = (service.name(), service.listen());
    let common = service.common();
    let store = open_store(&common.store, &common.data_dir).await?;
    let listener = flashmall_mesh::serve::listen(listen)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    if let Some(admin) = common.admin_listen {
        let probes = flashmall_mesh::serve::listen(admin)
            .map_err(|e| format!("cannot listen on {admin} (mesh.admin_listen): {e}"))?;
        tokio::spawn(flashmall_mesh::serve::serve_probes(
            name,
            probes,
            Readiness::always(),
            shutdown.clone(),
        ));
    }
    service
        .launch(store, listener, shutdown)?
        .finished(name)
        .await
}
