//! Thermos: the service that keeps OAuth tokens warm.
//!
//! The binary's library half: configuration, the provider client, the
//! refresh engine, the HTTP API and the CLI. `main.rs` only calls [`cli::run`].
//! Read ARCHITECTURE.md for the map.

pub mod api;
pub mod api_key;
pub mod app;
pub mod audit;
pub mod catalogue;
pub mod cli;
pub mod config;
pub mod demo;
pub mod egress;
pub mod engine;
pub mod metrics;
pub mod outbox;
pub mod provider;
pub mod telemetry;
