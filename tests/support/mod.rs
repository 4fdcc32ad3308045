//! Shared test support: golden vectors, the naive reference fold, comparisons.
#![allow(dead_code, unreachable_pub)]

pub mod broker;
pub mod golden;
pub mod processor;
pub mod reference;
