//! Shared test support: golden vectors, the naive reference fold, comparisons.
#![allow(dead_code, unreachable_pub)]

pub mod golden;
pub mod reference;
