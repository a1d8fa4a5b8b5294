//! Step 12 of the purchase path: every settled reservation becomes an
//! order. Settlement writes each reservation into the ledger's order
//! outbox in the same transaction that records it; this worker reads the
//! outbox, asks the order service to create the orders (idempotent: an
//! order's id is derived from its reservation's), and then takes them out
//! of the outbox. While the order service is down the outbox grows and
//! purchases go on; when it returns, the worker catches up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flashmall_mesh::{CallKind, Identity, MeshClient, trace};
use flashmall_proto::order as pb;
use pb::order_service_client::OrderServiceClient;
use tracing::Instrument;
use uuid::Uuid;

use crate::engine::Engine;
use crate::ledger::{ReservationRecord, ReservationStatus};

/// Longest pause between attempts while the order service fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often an idle worker looks at the outbox (settlement also wakes it).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Starts the order worker.
pub fn spawn(engine: Arc<Engine>, client: MeshClient) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            if engine.shutdown.is_triggered() {
                return;
            }
            let pause = match make_orders(&engine, &client).await {
                Ok(0) => {
                    failures = 0;
                    Some(IDLE_POLL)
                }
                Ok(_) => {
                    failures = 0;
                    None
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    metrics::counter!("flashmall_engine_order_failures_total").increment(1);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "making orders failed; the outbox keeps them");
                    }
                    Some(Duration::from_millis(50u64 << failures.min(7)).min(MAX_BACKOFF))
                }
            };
            if let Some(pause) = pause {
                tokio::select! {
                    _ = engine.orders_wake.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                    _ = engine.shutdown.wait() => return,
                }
            }
        }
    })
}

/// One round: up to a batch from the outbox; returns how many it took out.
pub async fn make_orders(engine: &Arc<Engine>, client: &MeshClient) -> Result<usize, String> {
    let batch = engine
        .ledger
        .order_outbox(engine.config.order_batch_size)
        .await
        .map_err(|e| e.to_string())?;
    metrics::gauge!("flashmall_engine_order_outbox").set(batch.len() as f64);
    if batch.is_empty() {
        return Ok(0);
    }
    let mut orders = Vec::with_capacity(batch.len());
    let mut sales = HashMap::new();
    for r in &batch {
        // A reservation released before its order was made (an admin
        // release) gets no order.
        if r.status != ReservationStatus::Held {
            continue;
        }
        let sale = match sales.get(&r.sale_id) {
            Some(s) => s,
            None => {
                let live = engine
                    .live_sale(r.sale_id)
                    .await
                    .map_err(|e| e.message)?
                    .ok_or_else(|| format!("reservation {} names no sale", r.id))?;
                sales.entry(r.sale_id).or_insert(live)
            }
        };
        orders.push(sale_order(r, &sale.sale.product_id, sale.sale.price));
    }
    // One span per batch, linked to the purchases whose orders it makes;
    // the order service's span is its child.
    let span = tracing::info_span!(
        "orders",
        otel.name = "engine make orders",
        orders = orders.len()
    );
    for r in &batch {
        if let Some(parent) = &r.traceparent {
            trace::link(&span, parent, "reservation_id", r.id.to_string());
        }
    }
    if !orders.is_empty() {
        let signed = engine.identity.sign_for(
            &Identity::service(
                "engine",
                flashmall_mesh::contract::SERVICE_CALL_IDENTITY_LIFE,
            ),
            "orders",
        );
        let request = pb::CreateSaleOrdersReq { orders };
        let created = client
            .call_as(
                "CreateSaleOrders",
                CallKind::Idempotent,
                &signed,
                &request,
                |channel, call| async move {
                    OrderServiceClient::new(channel)
                        .create_sale_orders(call)
                        .await
                },
            )
            .instrument(span)
            .await
            .map_err(|e| format!("order service: {}", e.message))?;
        metrics::counter!("flashmall_engine_orders_made_total").increment(created.created as u64);
    }
    let ids: Vec<Uuid> = batch.iter().map(|r| r.id).collect();
    engine
        .ledger
        .orders_made(&ids)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ids.len())
}

fn sale_order(r: &ReservationRecord, product_id: &str, price: i64) -> pb::SaleOrder {
    pb::SaleOrder {
        reservation_id: r.id.to_string(),
        sale_id: r.sale_id.to_string(),
        user_id: r.user_id.clone(),
        product_id: product_id.to_owned(),
        quantity: r.quantity,
        unit_price: price,
        reserved_at_ms: r.created_at_ms,
        order_id: r.order_id().to_string(),
    }
}
