//! autofollow: GoHighLevel webhooks in, contact followers out, decided by YAML rules.
//!
//! The data's path, one module per stage (ARCHITECTURE.md maps them): [`web`] receives and
//! authenticates webhooks, [`store`] keeps them, [`worker`] claims, decides and calls, with
//! [`rules`] (the YAML rules) and [`ghl`] (the GoHighLevel client), all in the vocabulary of
//! [`model`]. [`app`] assembles the service, [`config`] reads its settings, [`cli`] is the
//! command line.
//!
//! ```
//! use autofollow::model::event::{self, Parsed};
//! use autofollow::model::plan::PreviousState;
//! use autofollow::rules::{NoResolver, RuleSet};
//!
//! let rules = RuleSet::from_sources(&[(
//!     "rules.yaml",
//!     "users: {alice: 9hTnVvSr1Q2ZyE5kHfXm}\n\
//!      rules:\n  - name: vip\n    when: {has_tag: vip}\n    add: [alice]\n",
//! )])?;
//! let body = br#"{"type":"ContactTagUpdate","locationId":"L","id":"C","tags":["VIP"]}"#;
//! let Parsed::Event(event) = event::parse_app(body)? else { unreachable!() };
//! let decision = rules.evaluate(&event, &PreviousState::default(), &NoResolver);
//! assert_eq!(decision.plan.summary(), "add: alice");
//! assert_eq!(decision.plan.add[0].user.as_str(), "9hTnVvSr1Q2ZyE5kHfXm");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod access;
pub mod app;
pub mod cli;
pub mod config;
pub mod ghl;
pub mod metrics;
pub mod model;
pub mod rules;
pub mod seal;
pub mod store;
pub mod telemetry;
pub mod web;
pub mod worker;
