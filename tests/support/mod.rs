//! Shared test support: golden vectors, the naive reference fold, comparisons.
#![allow(dead_code, unreachable_pub)]

pub mod broker;
pub mod browser;
pub mod crash;
pub mod game_reference;
pub mod golden;
pub mod http;
pub mod outputs;
pub mod processor;
pub mod prometheus;
pub mod reference;
pub mod streams;
