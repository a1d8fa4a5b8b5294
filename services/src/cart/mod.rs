//! The cart service: each buyer's own cart (always the verified caller's;
//! no request names a user). Items are `{product_id, quantity}`; a product
//! must exist in the catalogue when it is added, quantities are bounded
//! (`[cart] max_quantity`, `max_items`), and the cart is shown with the
//! catalogue's current prices, never stored ones.
//!
//! A cart is one record (`Table::Carts`, by user id) changed with
//! conditional writes (`store::records`), so concurrent changes from two
//! devices never lose one another. Checkout takes away what it bought
//! once per checkout id (the record remembers the last few), leaving items
//! added meanwhile in place.
//!
//! - `http.rs`: the JSON API; `grpc.rs`: `CartService`.

pub mod config;
pub mod grpc;
pub mod http;

use std::collections::HashMap;
use std::sync::Arc;

use flashmall_mesh::{ApiError, ErrorCode, Identity, now_ms};
use serde::{Deserialize, Serialize};

use crate::products::client::CatalogClient;
use crate::store::records::{self, Step};
use crate::store::{ServiceStore, Table};
use config::CartConfig;

/// How many applied checkout ids a cart remembers.
const CHECKOUTS_REMEMBERED: usize = 16;

/// One product in a stored cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartEntry {
    pub product_id: String,
    pub quantity: i64,
    pub added_at_ms: u64,
}

/// A stored cart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartRecord {
    pub items: Vec<CartEntry>,
    pub updated_at_ms: u64,
    /// The last checkouts whose items were taken away (applied once).
    #[serde(default)]
    pub checkouts: Vec<String>,
}

/// One line of a cart as shown: the catalogue's current name and price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    pub product_id: String,
    pub quantity: i64,
    pub name: String,
    /// Minor units; 0 when the product left the catalogue.
    pub unit_price: i64,
    pub subtotal: i64,
    /// False when the product is no longer in the catalogue.
    pub available: bool,
}

/// A cart as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartView {
    pub items: Vec<CartLine>,
    /// Sum of the available lines, minor units.
    pub total: i64,
    pub updated_at_ms: u64,
}

/// An item as a client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemRequest {
    pub product_id: String,
    pub quantity: i64,
}

/// The cart service.
pub struct Carts {
    store: Arc<dyn ServiceStore>,
    catalog: CatalogClient,
    config: CartConfig,
}

fn owner(caller: &Identity) -> Result<&str, ApiError> {
    if caller.is_service() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a cart belongs to a buyer; call with a buyer's identity",
        ));
    }
    Ok(&caller.user_id)
}

fn not_in_cart(product_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("product {product_id} is not in your cart"),
    )
}

impl Carts {
    pub fn new(store: Arc<dyn ServiceStore>, catalog: CatalogClient, config: CartConfig) -> Self {
        Carts {
            store,
            catalog,
            config,
        }
    }

    pub fn max_body_bytes(&self) -> usize {
        self.config.max_body_bytes
    }

    fn check_quantity(&self, quantity: i64) -> Result<i64, ApiError> {
        if !(1..=self.config.max_quantity).contains(&quantity) {
            return Err(ApiError::invalid(format!(
                "quantity must be 1 to {} (to take an item out, remove it)",
                self.config.max_quantity
            )));
        }
        Ok(quantity)
    }

    /// Applies `change` to the caller's cart with a conditional write
    /// (creating an empty cart first). `change` returns `Ok(None)` to
    /// leave the cart as it is.
    async fn change(
        &self,
        user: &str,
        change: impl Fn(&CartRecord) -> Result<Option<CartRecord>, ApiError>,
    ) -> Result<CartRecord, ApiError> {
        if self.store.get(Table::Carts, user).await?.is_none() {
            let empty = serde_json::to_vec(&CartRecord::default())
                .map_err(|e| ApiError::internal(format!("a cart does not encode: {e}")))?;
            self.store.insert(Table::Carts, user, empty, None).await?;
        }
        // The decision's error, if it refused, is kept to answer with.
        let refused = std::sync::Mutex::new(None);
        let (cart, _) =
            records::move_record::<CartRecord>(
                &*self.store,
                Table::Carts,
                user,
                |c| match change(c) {
                    Ok(Some(next)) => Step::Write(CartRecord {
                        updated_at_ms: now_ms(),
                        ..next
                    }),
                    Ok(None) => Step::Keep,
                    Err(e) => {
                        *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        Step::Keep
                    }
                },
            )
            .await
            .map_err(|e| e.answer("cart", user))?;
        match refused.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(cart),
        }
    }

    async fn stored(&self, user: &str) -> Result<CartRecord, ApiError> {
        Ok(
            records::load::<CartRecord>(&*self.store, Table::Carts, user)
                .await
                .map_err(|e| e.answer("cart", user))?
                .map(|(c, _)| c)
                .unwrap_or_default(),
        )
    }

    /// Adds `quantity` units of a catalogue product to the caller's cart.
    pub async fn add(&self, caller: &Identity, item: ItemRequest) -> Result<CartView, ApiError> {
        let user = owner(caller)?;
        let quantity = self.check_quantity(item.quantity)?;
        let product_id = uuid::Uuid::try_parse(item.product_id.trim())
            .map_err(|_| ApiError::invalid(format!("{:?} is not a product id", item.product_id)))?
            .to_string();
        if self
            .catalog
            .batch_get(std::slice::from_ref(&product_id))
            .await?
            .is_empty()
        {
            return Err(ApiError::invalid(format!(
                "there is no product {product_id} in the catalogue"
            )));
        }
        let (max_items, max_quantity) = (self.config.max_items, self.config.max_quantity);
        let now = now_ms();
        let cart = self
            .change(user, |c| {
                let mut next = c.clone();
                let full = next.items.len() >= max_items;
                match next.items.iter_mut().find(|i| i.product_id == product_id) {
                    Some(i) if i.quantity + quantity > max_quantity => {
                        return Err(ApiError::invalid(format!(
                            "a cart holds at most {max_quantity} units of one product ({} already)",
                            i.quantity
                        )));
                    }
                    Some(i) => i.quantity += quantity,
                    None if full => {
                        return Err(ApiError::new(
                            ErrorCode::Conflict,
                            format!("a cart holds at most {max_items} different products"),
                        ));
                    }
                    None => next.items.push(CartEntry {
                        product_id: product_id.clone(),
                        quantity,
                        added_at_ms: now,
                    }),
                }
                Ok(Some(next))
            })
            .await?;
        metrics::counter!("flashmall_cart_changes_total", "op" => "add").increment(1);
        self.view(cart).await
    }

    /// Sets the quantity of an item already in the caller's cart.
    pub async fn update(
        &self,
        caller: &Identity,
        product_id: &str,
        quantity: i64,
    ) -> Result<CartView, ApiError> {
        let user = owner(caller)?;
        let quantity = self.check_quantity(quantity)?;
        let cart = self
            .change(user, |c| {
                let mut next = c.clone();
                let item = next
                    .items
                    .iter_mut()
                    .find(|i| i.product_id == product_id)
                    .ok_or_else(|| not_in_cart(product_id))?;
                item.quantity = quantity;
                Ok(Some(next))
            })
            .await?;
        metrics::counter!("flashmall_cart_changes_total", "op" => "update").increment(1);
        self.view(cart).await
    }

    /// Takes an item out of the caller's cart.
    pub async fn remove(&self, caller: &Identity, product_id: &str) -> Result<CartView, ApiError> {
        let user = owner(caller)?;
        let cart = self
            .change(user, |c| {
                let mut next = c.clone();
                let before = next.items.len();
                next.items.retain(|i| i.product_id != product_id);
                if next.items.len() == before {
                    return Err(not_in_cart(product_id));
                }
                Ok(Some(next))
            })
            .await?;
        metrics::counter!("flashmall_cart_changes_total", "op" => "remove").increment(1);
        self.view(cart).await
    }

    /// The caller's cart with current prices.
    pub async fn get(&self, caller: &Identity) -> Result<CartView, ApiError> {
        let user = owner(caller)?;
        let cart = self.stored(user).await?;
        self.view(cart).await
    }

    /// Empties the caller's cart; with `bought`, takes away just those
    /// quantities, once per `checkout_id`.
    pub async fn empty(
        &self,
        caller: &Identity,
        bought: Vec<ItemRequest>,
        checkout_id: &str,
    ) -> Result<(), ApiError> {
        let user = owner(caller)?;
        if !bought.is_empty() && (checkout_id.is_empty() || checkout_id.len() > 64) {
            return Err(ApiError::invalid(
                "taking bought items away needs the checkout_id (1 to 64 characters)",
            ));
        }
        self.change(user, |c| {
            if bought.is_empty() {
                return Ok((!c.items.is_empty()).then(|| CartRecord {
                    items: Vec::new(),
                    ..c.clone()
                }));
            }
            if c.checkouts.iter().any(|id| id == checkout_id) {
                return Ok(None);
            }
            let taken: HashMap<&str, i64> = bought
                .iter()
                .map(|i| (i.product_id.as_str(), i.quantity))
                .collect();
            let mut next = c.clone();
            for item in &mut next.items {
                if let Some(q) = taken.get(item.product_id.as_str()) {
                    item.quantity -= q;
                }
            }
            next.items.retain(|i| i.quantity > 0);
            next.checkouts.push(checkout_id.to_owned());
            let excess = next.checkouts.len().saturating_sub(CHECKOUTS_REMEMBERED);
            next.checkouts.drain(..excess);
            Ok(Some(next))
        })
        .await?;
        metrics::counter!("flashmall_cart_changes_total", "op" => "empty").increment(1);
        Ok(())
    }

    /// A stored cart with the catalogue's current names and prices.
    async fn view(&self, cart: CartRecord) -> Result<CartView, ApiError> {
        let ids: Vec<String> = cart.items.iter().map(|i| i.product_id.clone()).collect();
        let found = if ids.is_empty() {
            Vec::new()
        } else {
            self.catalog.batch_get(&ids).await?
        };
        let by_id: HashMap<&str, _> = found.iter().map(|p| (p.id.as_str(), p)).collect();
        let mut total: i64 = 0;
        let items = cart
            .items
            .iter()
            .map(|i| {
                let product = by_id.get(i.product_id.as_str());
                let unit_price = product.map_or(0, |p| p.price);
                let subtotal = unit_price.saturating_mul(i.quantity);
                total = total.saturating_add(subtotal);
                CartLine {
                    product_id: i.product_id.clone(),
                    quantity: i.quantity,
                    name: product.map(|p| p.name.clone()).unwrap_or_default(),
                    unit_price,
                    subtotal,
                    available: product.is_some(),
                }
            })
            .collect();
        Ok(CartView {
            items,
            total,
            updated_at_ms: cart.updated_at_ms,
        })
    }
}
