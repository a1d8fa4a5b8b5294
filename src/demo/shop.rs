//! The demo's normal purchase, beside the flash sale: while the storm hits
//! the engine, shoppers buy from the catalogue through cart and checkout.
//! A product with fewer units than shoppers shows that normal checkout
//! cannot oversell either; every shopper also buys a plentiful product, so
//! a paid checkout is a multi-item order at catalogue prices.

use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use flashmall_bench::api::steady_json_of;
use flashmall_bench::seckill::Check;

/// What the shop phase did.
#[derive(Debug, Clone, Default)]
pub struct ShopPhase {
    pub shoppers: usize,
    /// Units of the scarce product.
    pub scarce_stock: i64,
    pub paid: usize,
    pub out_of_stock: usize,
    /// Checkouts whose order expired before it was paid (a checkout that
    /// took longer than the payment window, on a slow machine).
    pub too_late: usize,
    /// Any other answer (an error the checks report).
    pub other: usize,
    pub checkout_p50_ms: f64,
    pub checkout_p99_ms: f64,
}

/// The catalogue and the carts, ready for checkout.
pub struct Shop {
    scarce: String,
    plenty: String,
    scarce_stock: i64,
    shoppers: Vec<String>,
}

const SCARCE_PRICE: i64 = 2_499;
const PLENTY_PRICE: i64 = 350;
const PLENTY_STOCK: i64 = 100_000;

async fn call(request: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

async fn create_product(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    name: &str,
    price: i64,
    stock: i64,
) -> Result<String, String> {
    let (status, body) = call(
        client
            .post(format!("{base}/api/v1/products"))
            .bearer_auth(admin)
            .json(&json!({"name": name, "price": price, "stock": stock})),
    )
    .await?;
    match body["id"].as_str() {
        Some(id) if status == 201 => Ok(id.to_owned()),
        _ => Err(format!("creating {name} failed: {status} {body}")),
    }
}

/// Creates the products (as the admin) and fills every shopper's cart.
pub async fn prepare(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    shoppers: &[String],
) -> Result<Shop, String> {
    let scarce_stock = (shoppers.len() as i64 / 2).max(1);
    let scarce = create_product(
        client,
        base,
        admin,
        "Demo limited teapot",
        SCARCE_PRICE,
        scarce_stock,
    )
    .await?;
    let plenty = create_product(
        client,
        base,
        admin,
        "Demo tea sampler",
        PLENTY_PRICE,
        PLENTY_STOCK,
    )
    .await?;
    for token in shoppers {
        for (product, quantity) in [(&scarce, 1), (&plenty, 2)] {
            let (status, body) = call(
                client
                    .post(format!("{base}/api/v1/cart/items"))
                    .bearer_auth(token)
                    .json(&json!({"product_id": product, "quantity": quantity})),
            )
            .await?;
            if status != 200 {
                return Err(format!("filling a cart failed: {status} {body}"));
            }
        }
    }
    Ok(Shop {
        scarce,
        plenty,
        scarce_stock,
        shoppers: shoppers.to_vec(),
    })
}

/// Every shopper checks out at once; then the checks.
pub async fn checkout_all(
    client: &reqwest::Client,
    base: &str,
    shop: Shop,
) -> Result<(ShopPhase, Vec<Check>), String> {
    let answers: Vec<(usize, u16, Value, Duration)> =
        futures::stream::iter(shop.shoppers.iter().enumerate())
            .map(|(n, token)| async move {
                let started = Instant::now();
                let checkout = || {
                    steady_json_of(
                        client
                            .post(format!("{base}/api/v1/checkout"))
                            .bearer_auth(token)
                            .header("idempotency-key", format!("demo-checkout-{n}")),
                    )
                };
                let mut answer = checkout().await;
                // 202: the payment is not decided yet (a payment replica
                // died mid-charge, the provider is slow); like a storefront,
                // ask again with the same key until it is, while its state
                // keeps moving within a stall window.
                let progress = super::orders::Progress::new();
                while matches!(answer, Ok((202, _))) && !progress.stalled() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let again = checkout().await;
                    if again.as_ref().map(|(s, b)| (*s, &b["status"]))
                        != answer.as_ref().map(|(s, b)| (*s, &b["status"]))
                    {
                        progress.moved();
                    }
                    answer = again;
                }
                let (status, body) = answer.unwrap_or_else(|e| (0, json!({"error": e})));
                (n, status, body, started.elapsed())
            })
            .buffer_unordered(64)
            .collect()
            .await;
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut phase = ShopPhase {
        shoppers: shop.shoppers.len(),
        scarce_stock: shop.scarce_stock,
        ..ShopPhase::default()
    };
    let mut wrong_totals = 0;
    let mut orders_not_paid = 0;
    let mut carts_touched = 0;
    for (n, status, body, took) in &answers {
        let _ = latency.record(took.as_micros().max(1) as u64);
        let token = &shop.shoppers[*n];
        let (_, cart) =
            steady_json_of(client.get(format!("{base}/api/v1/cart")).bearer_auth(token)).await?;
        let cart_len = cart["items"].as_array().map_or(0, Vec::len);
        match (status, body["error"]["code"].as_str()) {
            (201, _) => {
                phase.paid += 1;
                if body["total"] != SCARCE_PRICE + 2 * PLENTY_PRICE {
                    wrong_totals += 1;
                }
                let (_, order) = steady_json_of(
                    client
                        .get(format!(
                            "{base}/api/v1/orders/{}",
                            body["order_id"].as_str().unwrap_or("")
                        ))
                        .bearer_auth(token),
                )
                .await?;
                if order["status"] != "paid" {
                    orders_not_paid += 1;
                }
                if cart_len != 0 {
                    carts_touched += 1;
                }
            }
            (409, Some("out_of_stock")) => {
                phase.out_of_stock += 1;
                if cart_len != 2 {
                    carts_touched += 1;
                }
            }
            (409, Some("conflict")) => {
                phase.too_late += 1;
                if cart_len != 2 {
                    carts_touched += 1;
                }
            }
            _ => phase.other += 1,
        }
    }
    phase.checkout_p50_ms = latency.value_at_quantile(0.5) as f64 / 1000.0;
    phase.checkout_p99_ms = latency.value_at_quantile(0.99) as f64 / 1000.0;
    // A checkout that failed after holding stock gives it back when its
    // order closes (at once, or when a late order expires): wait for it.
    let stock = |id: String| async move {
        steady_json_of(client.get(format!("{base}/api/v1/products/{id}")))
            .await
            .map(|(_, p)| p["stock"].as_i64().unwrap_or(-1))
    };
    let paid = phase.paid as i64;
    let progress = super::orders::Progress::new();
    let mut seen = (-1, -1);
    let (scarce_left, plenty_left) = loop {
        let now = (
            stock(shop.scarce.clone()).await?,
            stock(shop.plenty.clone()).await?,
        );
        if now == (shop.scarce_stock - paid, PLENTY_STOCK - 2 * paid) || progress.stalled() {
            break now;
        }
        if now != seen {
            progress.moved();
            seen = now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expected = shop.scarce_stock.min(shop.shoppers.len() as i64);
    let checks = vec![
        // Exactly the scarce units are sold; a checkout too late for its
        // payment window held a unit for a while, so with late ones only
        // the bound is exact.
        Check {
            name: "checkout: no oversell",
            held: paid <= shop.scarce_stock
                && scarce_left == shop.scarce_stock - paid
                && if phase.too_late == 0 {
                    paid == expected
                } else {
                    paid + phase.too_late as i64 >= expected
                },
            detail: format!(
                "{} paid checkouts of {} scarce units, {scarce_left} left; {} out of stock, {} too late",
                phase.paid, shop.scarce_stock, phase.out_of_stock, phase.too_late
            ),
        },
        Check {
            name: "checkout: stock conserved",
            held: plenty_left == PLENTY_STOCK - 2 * phase.paid as i64 && phase.other == 0,
            detail: format!(
                "{plenty_left} of {PLENTY_STOCK} plentiful units left after {} paid orders of 2; {} other answers",
                phase.paid, phase.other
            ),
        },
        Check {
            name: "checkout: catalogue prices",
            held: wrong_totals == 0 && orders_not_paid == 0,
            detail: format!(
                "{wrong_totals} wrong totals, {orders_not_paid} paid checkouts without a paid order"
            ),
        },
        Check {
            name: "checkout: carts",
            held: carts_touched == 0,
            detail: format!(
                "{carts_touched} carts not emptied after paying or changed after failing"
            ),
        },
    ];
    Ok((phase, checks))
}
