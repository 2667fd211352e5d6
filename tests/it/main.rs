//! The test suite, one binary: each module is one area (the names say which), sharing the
//! helpers of [`common`]. Run one area with `cargo test --test it store_contract`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

mod common;

mod abuse;
mod admin;
mod backfill;
mod bad_requests;
mod browser;
mod chaos;
mod cli;
mod connecting;
mod console;
mod container;
mod crash;
mod docs_commands;
mod evaluation;
mod example_rules;
mod fidelity;
mod http_limits;
mod layering;
mod limits;
mod lint;
mod migrate;
mod oauth;
mod online;
mod operations;
mod ops;
mod ownership;
mod pits;
mod readme;
mod reapply;
mod reconcile;
mod reload;
mod replicas;
mod robustness;
mod rule_tests;
mod security;
mod service;
mod simulate;
mod store_contract;
mod store_faults;
mod targets;
mod validation;
mod webhook_fixtures;
