//! The shared vocabulary, below everything else: GoHighLevel ids, the event a webhook body
//! becomes, the plan a decision makes, and the record of processing. It imports nothing of
//! the crate but itself.

pub mod event;
pub mod ids;
pub mod plan;
pub mod record;
pub mod task;
