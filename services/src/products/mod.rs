//! The product catalogue: products (name, description, price in minor
//! units, categories, stock) and categories; listing, batch reads and word
//! search. Merchants and admins create products; a product's merchant or an
//! admin changes or deletes it; admins create categories. Anyone reads.
//!
//! A product is a record (`Table::Products`); listing and search go through
//! index rows that point at records (`ProductIndex`: `*` and `c/<category>`;
//! `ProductTerms`: one partition per word). The record is the truth: rows
//! for a new state are written before the record, stale rows are removed
//! after it, and every read checks what it found against the record, so a
//! crash between the writes never shows a product where it does not
//! belong.

pub mod client;
pub mod config;
pub mod grpc;
pub mod http;
pub mod stock;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use flashmall_mesh::{ApiError, ErrorCode, Identity, Role, now_ms};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::records::{self, RecordError, Step};
use crate::store::{Row, RowRange, ServiceStore, Table};
use config::ProductsConfig;

/// Longest product name, in characters.
pub const NAME_MAX: usize = 200;
/// Longest description, in characters.
pub const DESCRIPTION_MAX: usize = 5_000;
/// Highest price, in minor units (100 million in major units).
pub const PRICE_MAX: i64 = 10_000_000_000;
/// Most units of stock.
pub const STOCK_MAX: i64 = 1_000_000_000;
/// Most categories of one product.
pub const CATEGORIES_MAX: usize = 10;
/// Most ids in one batch read.
pub const BATCH_MAX: usize = 100;
/// Most products per page.
pub const PAGE_MAX: u32 = 100;
/// Products per page when none is asked.
pub const PAGE_DEFAULT: u32 = 20;
/// Deepest offset page reachable with `page` (beyond: `page_token`).
pub const OFFSET_MAX: usize = 10_000;
/// Most index rows one page request examines. A search for words few
/// products hold together may find fewer than a page (even none) within
/// them; it answers what it found and a `next` token to go on from.
pub const EXAMINED_MAX: usize = 500;
/// Longest search query, in characters, and most words in it.
pub const QUERY_MAX: usize = 200;
pub const QUERY_WORDS_MAX: usize = 8;
/// Longest indexed word; longer words are cut to this, when indexed and
/// when searched alike.
const WORD_MAX: usize = 64;
/// The index partition of every product.
const ALL: &str = "*";
/// The index partition listing the category names.
const CATEGORY_LIST: &str = "categories";

/// A product of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// Minor units (cents).
    pub price: i64,
    pub categories: Vec<String>,
    /// Units available to normal checkout (held units are not counted).
    pub stock: i64,
    /// The merchant (user id) that owns it.
    pub merchant_id: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Normal checkout's stock holds on this product, by hold (order) id:
    /// open ones, and closed ones until their deadline (`stock.rs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub holds: BTreeMap<String, stock::Hold>,
}

/// A category of products.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Category {
    pub name: String,
    pub description: String,
    pub created_at_ms: u64,
}

/// What a merchant sends to create a product.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub price: i64,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub stock: i64,
}

/// The fields of a product to change; `None` leaves one as it is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price: Option<i64>,
    pub categories: Option<Vec<String>>,
    pub stock: Option<i64>,
}

/// What an admin sends to create a category.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCategory {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// Which page of a listing: a cursor (`token`, the previous page's last
/// id) or an offset (`number`, 1-based).
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub size: u32,
    pub token: Option<String>,
    pub number: Option<u32>,
}

/// One page of products and the cursor of the next one.
#[derive(Debug, Clone)]
pub struct Page {
    pub products: Vec<Product>,
    pub next: Option<String>,
}

/// The catalogue over the services' store.
pub struct Products {
    store: Arc<dyn ServiceStore>,
    config: ProductsConfig,
    /// Serializes this replica's stock moves per product (by hash), so
    /// concurrent checkouts of one product queue here instead of losing
    /// conditional writes to each other; replicas still race safely.
    stock_locks: Vec<tokio::sync::Mutex<()>>,
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such product")
}

fn record_error(id: Uuid, e: RecordError) -> ApiError {
    e.answer("product", &id.to_string())
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    // A malformed id names no product: the same answer as a missing one.
    Uuid::try_parse(raw).map_err(|_| not_found())
}

fn category_partition(name: &str) -> String {
    format!("c/{name}")
}

/// The words of `text` as the index keeps them: lowercase runs of letters
/// and digits, cut to `WORD_MAX` characters.
pub fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase().chars().take(WORD_MAX).collect())
        .collect()
}

fn product_words(p: &Product) -> BTreeSet<String> {
    let mut all = words(&p.name);
    all.extend(words(&p.description));
    all
}

/// The index rows of a product: `(table, partition)`, each with the
/// product id as its sort key.
fn index_rows(p: &Product) -> BTreeSet<(Table, String)> {
    let mut rows = BTreeSet::new();
    rows.insert((Table::ProductIndex, ALL.to_owned()));
    for c in &p.categories {
        rows.insert((Table::ProductIndex, category_partition(c)));
    }
    for w in product_words(p) {
        rows.insert((Table::ProductTerms, w));
    }
    rows
}

/// A category name: a slug of 1 to 64 lowercase letters, digits and
/// dashes, not starting or ending with a dash.
pub fn valid_category_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    let len = name.chars().count();
    if len == 0 || len > NAME_MAX {
        return Err(ApiError::invalid(format!(
            "name must be 1 to {NAME_MAX} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name must not hold control characters"));
    }
    Ok(name.to_owned())
}

fn check_description(description: &str) -> Result<String, ApiError> {
    if description.chars().count() > DESCRIPTION_MAX {
        return Err(ApiError::invalid(format!(
            "description must be at most {DESCRIPTION_MAX} characters"
        )));
    }
    Ok(description.trim().to_owned())
}

fn check_price(price: i64) -> Result<i64, ApiError> {
    if !(1..=PRICE_MAX).contains(&price) {
        return Err(ApiError::invalid(format!(
            "price must be 1 to {PRICE_MAX} minor units (integer cents)"
        )));
    }
    Ok(price)
}

fn check_stock(stock: i64) -> Result<i64, ApiError> {
    if !(0..=STOCK_MAX).contains(&stock) {
        return Err(ApiError::invalid(format!(
            "stock must be 0 to {STOCK_MAX} units"
        )));
    }
    Ok(stock)
}

fn page_size(size: u32) -> Result<usize, ApiError> {
    match size {
        0 => Ok(PAGE_DEFAULT as usize),
        1..=PAGE_MAX => Ok(size as usize),
        _ => Err(ApiError::invalid(format!(
            "page_size must be 1 to {PAGE_MAX}"
        ))),
    }
}

/// Whether `caller` may change or delete `p`.
fn may_edit(caller: &Identity, p: &Product) -> bool {
    caller.is_admin() || (caller.has(Role::Merchant) && p.merchant_id == caller.user_id)
}

fn require_seller(caller: &Identity) -> Result<(), ApiError> {
    if caller.is_admin() || caller.has(Role::Merchant) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "only merchants and admins manage products",
        ))
    }
}

impl Products {
    pub fn new(store: Arc<dyn ServiceStore>, config: ProductsConfig) -> Self {
        Products {
            store,
            config,
            stock_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    pub fn max_body_bytes(&self) -> usize {
        self.config.max_body_bytes
    }

    async fn load(&self, id: Uuid) -> Result<Option<(Product, u64)>, ApiError> {
        records::load::<Product>(&*self.store, Table::Products, &id.to_string())
            .await
            .map_err(|e| record_error(id, e))
    }

    /// One product.
    pub async fn get(&self, raw_id: &str) -> Result<Product, ApiError> {
        let id = parse_id(raw_id)?;
        Ok(self.load(id).await?.ok_or_else(not_found)?.0)
    }

    /// Products by id, in the order asked, each once; unknown or malformed
    /// ids are left out.
    pub async fn batch_get(&self, ids: &[String]) -> Result<Vec<Product>, ApiError> {
        if ids.len() > BATCH_MAX {
            return Err(ApiError::invalid(format!(
                "at most {BATCH_MAX} ids at once"
            )));
        }
        let mut seen = BTreeSet::new();
        let mut found = Vec::new();
        for raw in ids {
            let Ok(id) = Uuid::try_parse(raw.trim()) else {
                continue;
            };
            if seen.insert(id)
                && let Some((p, _)) = self.load(id).await?
            {
                found.push(p);
            }
        }
        Ok(found)
    }

    /// Checks that every category exists; returns them sorted, each once.
    async fn known_categories(&self, names: &[String]) -> Result<Vec<String>, ApiError> {
        let names: BTreeSet<String> = names.iter().map(|n| n.trim().to_owned()).collect();
        if names.len() > CATEGORIES_MAX {
            return Err(ApiError::invalid(format!(
                "a product has at most {CATEGORIES_MAX} categories"
            )));
        }
        for name in &names {
            if !valid_category_name(name)
                || self.store.get(Table::Categories, name).await?.is_none()
            {
                return Err(ApiError::invalid(format!(
                    "unknown category {name:?}; an admin creates categories first"
                )));
            }
        }
        Ok(names.into_iter().collect())
    }

    async fn put_rows(&self, rows: &BTreeSet<(Table, String)>, id: Uuid) -> Result<(), ApiError> {
        for (table, partition) in rows {
            self.store
                .put_row(*table, partition, &id.to_string(), Vec::new())
                .await?;
        }
        Ok(())
    }

    async fn delete_rows(
        &self,
        rows: &BTreeSet<(Table, String)>,
        id: Uuid,
    ) -> Result<(), ApiError> {
        for (table, partition) in rows {
            self.store
                .delete_row(*table, partition, &id.to_string())
                .await?;
        }
        Ok(())
    }

    /// Creates a product owned by the caller (a merchant or an admin).
    pub async fn create(&self, caller: &Identity, new: NewProduct) -> Result<Product, ApiError> {
        require_seller(caller)?;
        let now = now_ms();
        let product = Product {
            id: Uuid::now_v7(),
            name: check_name(&new.name)?,
            description: check_description(&new.description)?,
            price: check_price(new.price)?,
            categories: self.known_categories(&new.categories).await?,
            stock: check_stock(new.stock)?,
            merchant_id: caller.user_id.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            holds: BTreeMap::new(),
        };
        // Rows first: a crash before the record leaves rows that reads skip.
        self.put_rows(&index_rows(&product), product.id).await?;
        let value = serde_json::to_vec(&product)
            .map_err(|e| ApiError::internal(format!("a product does not encode: {e}")))?;
        if !self
            .store
            .insert(Table::Products, &product.id.to_string(), value, None)
            .await?
        {
            return Err(ApiError::internal("a new product id is already taken"));
        }
        metrics::counter!("flashmall_products_written_total", "op" => "create").increment(1);
        Ok(product)
    }

    /// Changes the fields `patch` gives (the product's merchant or an admin).
    pub async fn update(
        &self,
        caller: &Identity,
        raw_id: &str,
        patch: ProductPatch,
    ) -> Result<Product, ApiError> {
        require_seller(caller)?;
        let id = parse_id(raw_id)?;
        let name = patch.name.as_deref().map(check_name).transpose()?;
        let description = patch
            .description
            .as_deref()
            .map(check_description)
            .transpose()?;
        let price = patch.price.map(check_price).transpose()?;
        let stock = patch.stock.map(check_stock).transpose()?;
        let categories = match &patch.categories {
            Some(c) => Some(self.known_categories(c).await?),
            None => None,
        };
        let apply = |p: &Product| Product {
            name: name.clone().unwrap_or_else(|| p.name.clone()),
            description: description.clone().unwrap_or_else(|| p.description.clone()),
            price: price.unwrap_or(p.price),
            categories: categories.clone().unwrap_or_else(|| p.categories.clone()),
            stock: stock.unwrap_or(p.stock),
            updated_at_ms: now_ms(),
            ..p.clone()
        };

        let (before, _) = self.load(id).await?.ok_or_else(not_found)?;
        if !may_edit(caller, &before) {
            return Err(forbidden());
        }
        // Rows of the state about to be written go in first.
        self.put_rows(&index_rows(&apply(&before)), id).await?;
        // The state each attempt replaced, for removing its stale rows.
        let replaced = Mutex::new(before);
        let (after, wrote) =
            records::move_record::<Product>(&*self.store, Table::Products, &id.to_string(), |p| {
                if may_edit(caller, p) {
                    *replaced.lock().unwrap_or_else(|e| e.into_inner()) = p.clone();
                    Step::Write(apply(p))
                } else {
                    Step::Keep
                }
            })
            .await
            .map_err(|e| match e {
                RecordError::Missing => not_found(),
                e => record_error(id, e),
            })?;
        if !wrote {
            return Err(forbidden());
        }
        let replaced = replaced.into_inner().unwrap_or_else(|e| e.into_inner());
        let fresh = index_rows(&after);
        // The state written may differ from the one predicted (another
        // writer in between): make sure its rows exist, then drop stale ones.
        self.put_rows(&fresh, id).await?;
        let stale = index_rows(&replaced)
            .difference(&fresh)
            .cloned()
            .collect::<BTreeSet<_>>();
        self.delete_rows(&stale, id).await?;
        metrics::counter!("flashmall_products_written_total", "op" => "update").increment(1);
        Ok(after)
    }

    /// Removes a product (its merchant or an admin).
    pub async fn delete(&self, caller: &Identity, raw_id: &str) -> Result<(), ApiError> {
        require_seller(caller)?;
        let id = parse_id(raw_id)?;
        for _ in 0..records::MOVE_ATTEMPTS {
            let (product, version) = self.load(id).await?.ok_or_else(not_found)?;
            if !may_edit(caller, &product) {
                return Err(forbidden());
            }
            if self
                .store
                .delete(Table::Products, &id.to_string(), Some(version))
                .await?
            {
                self.delete_rows(&index_rows(&product), id).await?;
                metrics::counter!("flashmall_products_written_total", "op" => "delete")
                    .increment(1);
                return Ok(());
            }
        }
        Err(ApiError::new(
            ErrorCode::Conflict,
            "the product is changing too often; retry",
        ))
    }

    /// Products newest first: every product, or one category's.
    pub async fn list(&self, category: Option<&str>, page: &PageRequest) -> Result<Page, ApiError> {
        let partition = match category.map(str::trim).filter(|c| !c.is_empty()) {
            Some(c) if valid_category_name(c) => category_partition(c),
            Some(c) => {
                return Err(ApiError::invalid(format!(
                    "{c:?} is not a category name (lowercase letters, digits and dashes)"
                )));
            }
            None => ALL.to_owned(),
        };
        let wanted = category.map(str::trim).filter(|c| !c.is_empty());
        self.page_of(Table::ProductIndex, &partition, page, |p| {
            wanted.is_none_or(|c| p.categories.iter().any(|x| x == c))
        })
        .await
    }

    /// Products whose name or description holds every word of `query`,
    /// newest first.
    pub async fn search(&self, query: &str, page: &PageRequest) -> Result<Page, ApiError> {
        if query.chars().count() > QUERY_MAX {
            return Err(ApiError::invalid(format!(
                "the query must be at most {QUERY_MAX} characters"
            )));
        }
        let terms = words(query);
        if terms.is_empty() {
            return Err(ApiError::invalid(
                "the query must hold at least one word (letters or digits)",
            ));
        }
        if terms.len() > QUERY_WORDS_MAX {
            return Err(ApiError::invalid(format!(
                "the query may hold at most {QUERY_WORDS_MAX} words"
            )));
        }
        // Walk the longest word's rows (likely the fewest) and keep the
        // products holding every word.
        let walk = terms
            .iter()
            .max_by_key(|w| (w.chars().count(), std::cmp::Reverse((*w).clone())))
            .cloned()
            .unwrap_or_default();
        self.page_of(Table::ProductTerms, &walk, page, |p| {
            let have = product_words(p);
            terms.iter().all(|t| have.contains(t))
        })
        .await
    }

    /// One page from an index partition, newest first, keeping the products
    /// that `matches` (stale rows and deleted products are skipped). Stops
    /// after `EXAMINED_MAX` rows with what it found and a `next` token.
    async fn page_of(
        &self,
        table: Table,
        partition: &str,
        page: &PageRequest,
        matches: impl Fn(&Product) -> bool,
    ) -> Result<Page, ApiError> {
        let size = page_size(page.size)?;
        let mut after = match (&page.token, page.number) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid("give page or page_token, not both"));
            }
            (Some(token), None) => Some(
                Uuid::try_parse(token)
                    .map_err(|_| ApiError::invalid("page_token is not one this API gave"))?
                    .to_string(),
            ),
            (None, Some(0)) => return Err(ApiError::invalid("page counts from 1")),
            (None, Some(n)) => {
                let skip = (n as usize - 1) * size;
                if skip > OFFSET_MAX {
                    return Err(ApiError::invalid(format!(
                        "page reaches past the first {OFFSET_MAX} products; use page_token"
                    )));
                }
                self.skip(table, partition, skip).await?
            }
            (None, None) => None,
        };
        if page.number.is_some_and(|n| n > 1) && after.is_none() {
            // The offset ran past the end.
            return Ok(Page {
                products: Vec::new(),
                next: None,
            });
        }
        let mut products = Vec::new();
        let mut examined = 0;
        loop {
            if examined >= EXAMINED_MAX {
                // Bounded work per request: the client goes on from here.
                metrics::counter!("flashmall_products_pages_cut_total").increment(1);
                return Ok(Page {
                    products,
                    next: after,
                });
            }
            let want = size.min(EXAMINED_MAX - examined);
            let rows = self.newest_rows(table, partition, &after, want).await?;
            let exhausted = rows.len() < want;
            examined += rows.len();
            for Row { sort, .. } in rows {
                after = Some(sort.clone());
                let Ok(id) = Uuid::try_parse(&sort) else {
                    continue;
                };
                if let Some((p, _)) = self.load(id).await?
                    && matches(&p)
                {
                    products.push(p);
                    if products.len() == size {
                        let next = Some(id.to_string());
                        return Ok(Page { products, next });
                    }
                }
            }
            if exhausted {
                return Ok(Page {
                    products,
                    next: None,
                });
            }
        }
    }

    /// Up to `limit` rows of a partition, newest first, after `after`.
    async fn newest_rows(
        &self,
        table: Table,
        partition: &str,
        after: &Option<String>,
        limit: usize,
    ) -> Result<Vec<Row>, ApiError> {
        let range = RowRange {
            after: after.clone(),
            up_to: None,
            limit,
            descending: true,
        };
        Ok(self.store.rows(table, partition, range).await?)
    }

    /// The sort key of the `n`th row of a partition (newest first), from
    /// which the page after it starts; `None` when the partition is shorter.
    async fn skip(
        &self,
        table: Table,
        partition: &str,
        n: usize,
    ) -> Result<Option<String>, ApiError> {
        let mut after = None;
        let mut left = n;
        while left > 0 {
            let rows = self
                .newest_rows(table, partition, &after, left.min(1_000))
                .await?;
            let Some(last) = rows.last() else {
                return Ok(None);
            };
            left -= rows.len();
            after = Some(last.sort.clone());
            if left > 0 && rows.len() < 1_000 {
                return Ok(None);
            }
        }
        Ok(after)
    }

    /// Every category, by name.
    pub async fn categories(&self) -> Result<Vec<Category>, ApiError> {
        let rows = self
            .store
            .rows(
                Table::ProductIndex,
                CATEGORY_LIST,
                RowRange {
                    after: None,
                    up_to: None,
                    limit: 10_000,
                    descending: false,
                },
            )
            .await?;
        let mut found = Vec::new();
        for row in rows {
            if let Some((c, _)) =
                records::load::<Category>(&*self.store, Table::Categories, &row.sort)
                    .await
                    .map_err(|e| e.answer("category", &row.sort))?
            {
                found.push(c);
            }
        }
        Ok(found)
    }

    /// Creates a category (admins only).
    pub async fn create_category(
        &self,
        caller: &Identity,
        new: NewCategory,
    ) -> Result<Category, ApiError> {
        caller.require(Role::Admin)?;
        let name = new.name.trim().to_owned();
        if !valid_category_name(&name) {
            return Err(ApiError::invalid(
                "a category name is 1 to 64 lowercase letters, digits and dashes, \
                 not starting or ending with a dash",
            ));
        }
        if new.description.chars().count() > 500 {
            return Err(ApiError::invalid(
                "a category description is at most 500 characters",
            ));
        }
        let category = Category {
            name: name.clone(),
            description: new.description.trim().to_owned(),
            created_at_ms: now_ms(),
        };
        // The listing row first; the record decides whether it exists.
        self.store
            .put_row(Table::ProductIndex, CATEGORY_LIST, &name, Vec::new())
            .await?;
        let value = serde_json::to_vec(&category)
            .map_err(|e| ApiError::internal(format!("a category does not encode: {e}")))?;
        if !self
            .store
            .insert(Table::Categories, &name, value, None)
            .await?
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("the category {name:?} exists already"),
            ));
        }
        Ok(category)
    }
}

/// The answer to a seller changing another merchant's product (products
/// are public, so there is nothing to hide behind a 404).
fn forbidden() -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        "only the product's merchant or an admin may change it",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercase_alphanumeric_runs() {
        let w = words("Red  T-Shirt, size XL (100% cotton)");
        let got: Vec<&str> = w.iter().map(String::as_str).collect();
        assert_eq!(got, ["100", "cotton", "red", "shirt", "size", "t", "xl"]);
        assert!(words("  --  ").is_empty());
        assert_eq!(
            words(&"a".repeat(100)).iter().next().unwrap().len(),
            WORD_MAX
        );
    }

    #[test]
    fn category_names_are_slugs() {
        for ok in ["books", "home-garden", "a", "x1"] {
            assert!(valid_category_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Books", "a b", "ä", &"a".repeat(65)] {
            assert!(!valid_category_name(bad), "{bad}");
        }
    }

    #[test]
    fn money_and_stock_bounds() {
        assert!(check_price(0).is_err());
        assert!(check_price(-5).is_err());
        assert!(check_price(PRICE_MAX + 1).is_err());
        assert_eq!(check_price(1999).unwrap(), 1999);
        assert!(check_stock(-1).is_err());
        assert_eq!(check_stock(0).unwrap(), 0);
        assert!(check_name(" ").is_err());
        assert!(check_name(&"n".repeat(NAME_MAX + 1)).is_err());
        assert!(check_name("bad\u{7}name").is_err());
        assert!(check_description(&"d".repeat(DESCRIPTION_MAX + 1)).is_err());
    }
}
