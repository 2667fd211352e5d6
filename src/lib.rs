//! autofollow: GoHighLevel webhooks in, contact followers out, decided by YAML rules.
//!
//! The data's path: [`event`] parses a webhook body into a normalized [`event::Event`];
//! [`rules`] loads the rule files and decides a [`rules::Plan`] for each event;
//! [`pipelines`] resolves pipeline and stage names; [`cli`] is the command line over them.

pub mod cli;
pub mod event;
pub mod ids;
pub mod pipelines;
pub mod rules;
