//! flashmall's protobuf contracts and their generated tonic code.
//!
//! Owns nothing but generated types: no business logic, no dependency on any
//! other flashmall crate.

/// The auth and user service's API (`flashmall.user.v1`).
pub mod user {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("flashmall.user.v1");
}

/// The inventory engine's API (`flashmall.inventory.v1`).
pub mod inventory {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("flashmall.inventory.v1");
}

/// The order service's API (`flashmall.order.v1`).
pub mod order {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("flashmall.order.v1");
}

/// The payment service's API (`flashmall.payment.v1`).
pub mod payment {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("flashmall.payment.v1");
}

/// The product service's API (`flashmall.product.v1`).
pub mod product {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("flashmall.product.v1");
}

/// The cart service's API (`flashmall.cart.v1`).
pub mod cart {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("flashmall.cart.v1");
}

/// The checkout service's API (`flashmall.checkout.v1`).
pub mod checkout {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("flashmall.checkout.v1");
}
