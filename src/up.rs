//! `flashmall up`: every component in one process, on the embedded stores
//! unless the config points at real ones, behind the edge proxy (the only
//! port a client needs). The mesh key and the JWT secret are random per
//! process unless configured.

use std::sync::Arc;

use flashmall_mesh::Shutdown;
use flashmall_services::Service;
use tokio::net::TcpListener;

use crate::config::Config;

async fn listen(addr: std::net::SocketAddr) -> Result<TcpListener, String> {
    flashmall_mesh::serve::listen(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Runs the stack until SIGTERM or Ctrl-C; the first component to fail
/// stops the others.
pub async fn run(mut config: Config) -> Result<(), String> {
    if config.mesh.tls.enabled() {
        return Err(
            "mesh.tls is for components run on their own (flashmall engine, proxy, \
                    service): flashmall up keeps its components on loopback, in one process"
                .into(),
        );
    }
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let identity = config.mesh.key_or_random()?;
    let jwt_secret = config.jwt_secret_or_random();
    // The proxy's pools and the components' peers are the components of
    // this process.
    let at = |addr: std::net::SocketAddr| vec![addr.to_string()];
    let (engine, orders, products) = (
        at(config.engine.listen),
        at(config.orders.listen),
        at(config.products.listen),
    );
    for (pool, addr) in [
        ("engine", engine.clone()),
        ("auth", at(config.auth.listen)),
        ("orders", orders.clone()),
        ("payments", at(config.payments.listen)),
        ("products", products.clone()),
        ("cart", at(config.cart.listen)),
        ("checkout", at(config.checkout.listen)),
    ] {
        config.proxy.upstreams.insert(pool.into(), addr);
    }
    config.engine.order_endpoints = orders.clone();
    config.orders.engine_endpoints = engine;
    config.orders.product_endpoints = products.clone();
    config.payments.order_endpoints = orders.clone();
    config.cart.product_endpoints = products.clone();
    config.checkout.product_endpoints = products;
    config.checkout.cart_endpoints = at(config.cart.listen);
    config.checkout.order_endpoints = orders;
    config.checkout.payment_endpoints = at(config.payments.listen);
    let engine = config.engine_settings(identity.clone());
    let services = [
        Service::Auth(config.auth_settings(identity.clone(), jwt_secret.clone())),
        Service::Orders(config.orders_settings(identity.clone())),
        Service::Payments(config.payments_settings(identity.clone())),
        Service::Products(config.products_settings(identity.clone())),
        Service::Cart(config.cart_settings(identity.clone())),
        Service::Checkout(config.checkout_settings(identity.clone())),
    ];
    let proxy = config.proxy_settings(identity, jwt_secret);
    let ports: Vec<String> = services
        .iter()
        .map(|s| format!("{}={}", s.name(), s.listen()))
        .collect();
    tracing::info!(
        proxy = %proxy.proxy.listen,
        proxy_admin = %proxy.proxy.admin_listen,
        engine = %engine.engine.listen,
        services = %ports.join(" "),
        data_dir = %engine.data_dir.display(),
        redis = if engine.redis.url.is_empty() { "in-process" } else { engine.redis.url.as_str() },
        "flashmall up"
    );
    // One services store for the services (the embedded store is one
    // file, opened once).
    let store = flashmall_services::open_store(&config.store, &config.data.dir).await?;
    let mut running = Vec::new();
    for service in &services {
        let started = service.launch(
            Arc::clone(&store),
            listen(service.listen()).await?,
            shutdown.clone(),
        )?;
        running.push(stop_all_on_exit(
            started.finished(service.name()),
            &shutdown,
        ));
    }
    let (engine_result, proxy_result, service_results) = tokio::join!(
        stop_all_on_exit(flashmall_engine::run(engine, shutdown.clone()), &shutdown),
        stop_all_on_exit(flashmall_proxy::run(proxy, shutdown.clone()), &shutdown),
        futures::future::join_all(running),
    );
    service_results
        .into_iter()
        .fold(engine_result.and(proxy_result), |all, r| all.and(r))
}

async fn stop_all_on_exit(
    component: impl std::future::Future<Output = Result<(), String>>,
    shutdown: &Shutdown,
) -> Result<(), String> {
    let result = component.await;
    shutdown.trigger();
    result
}
