//! `flashmall up`: every component in one process, on the embedded stores
//! unless the config points at real ones, behind the edge proxy (the only
//! port a client needs). The mesh key and the JWT secret are random per
//! process unless configured.

use std::sync::Arc;

use flashmall_mesh::Shutdown;
use tokio::net::TcpListener;

use crate::config::Config;

async fn listen(addr: std::net::SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Runs the stack until SIGTERM or Ctrl-C; the first component to fail
/// stops the others.
pub async fn run(mut config: Config) -> Result<(), String> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let identity = config.mesh.key_or_random()?;
    let jwt_secret = config.jwt_secret_or_random();
    // The proxy's pools and the components' peers are the components of
    // this process.
    let engine_addr = config.engine.listen.to_string();
    let orders_addr = config.orders.listen.to_string();
    for (pool, addr) in [
        ("engine", engine_addr.clone()),
        ("auth", config.auth.listen.to_string()),
        ("orders", orders_addr.clone()),
        ("payments", config.payments.listen.to_string()),
        ("products", config.products.listen.to_string()),
    ] {
        config.proxy.upstreams.insert(pool.into(), vec![addr]);
    }
    config.engine.order_endpoints = vec![orders_addr.clone()];
    config.orders.engine_endpoints = vec![engine_addr];
    config.payments.order_endpoints = vec![orders_addr];
    let engine = config.engine_settings(identity.clone());
    let auth = config.auth_settings(identity.clone(), jwt_secret.clone());
    let orders = config.orders_settings(identity.clone());
    let payments = config.payments_settings(identity.clone());
    let products = config.products_settings(identity.clone());
    let proxy = config.proxy_settings(identity, jwt_secret);
    tracing::info!(
        proxy = %proxy.proxy.listen,
        engine = %engine.engine.listen,
        auth = %auth.auth.listen,
        orders = %orders.orders.listen,
        payments = %payments.payments.listen,
        products = %products.products.listen,
        data_dir = %engine.data_dir.display(),
        redis = if engine.redis.url.is_empty() { "in-process" } else { engine.redis.url.as_str() },
        "flashmall up"
    );
    // One services store for the services (the embedded store is one
    // file, opened once).
    let store = flashmall_services::open_store(&auth.common.store, &auth.common.data_dir).await?;
    let auth_running = flashmall_services::launch_auth(
        &auth,
        Arc::clone(&store),
        listen(auth.auth.listen).await?,
        shutdown.clone(),
    )?;
    let orders_running = flashmall_services::launch_orders(
        &orders,
        Arc::clone(&store),
        listen(orders.orders.listen).await?,
        shutdown.clone(),
    )?;
    let payments_running = flashmall_services::launch_payments(
        &payments,
        Arc::clone(&store),
        listen(payments.payments.listen).await?,
        shutdown.clone(),
    )?;
    let products_running = flashmall_services::launch_products(
        &products,
        store,
        listen(products.products.listen).await?,
        shutdown.clone(),
    )?;
    let served = |name: &'static str, running: flashmall_services::Running| async move {
        running
            .served
            .await
            .map_err(|e| format!("{name} server task failed: {e}"))?
            .map_err(|e| format!("{name} server failed: {e}"))
    };
    let (engine_result, auth_result, orders_result, payments_result, products_result, proxy_result) = tokio::join!(
        stop_all_on_exit(flashmall_engine::run(engine, shutdown.clone()), &shutdown),
        stop_all_on_exit(served("auth", auth_running), &shutdown),
        stop_all_on_exit(served("orders", orders_running), &shutdown),
        stop_all_on_exit(served("payments", payments_running), &shutdown),
        stop_all_on_exit(served("products", products_running), &shutdown),
        stop_all_on_exit(flashmall_proxy::run(proxy, shutdown.clone()), &shutdown),
    );
    engine_result
        .and(auth_result)
        .and(orders_result)
        .and(payments_result)
        .and(products_result)
        .and(proxy_result)
}

async fn stop_all_on_exit(
    component: impl std::future::Future<Output = Result<(), String>>,
    shutdown: &Shutdown,
) -> Result<(), String> {
    let result = component.await;
    shutdown.trigger();
    result
}
