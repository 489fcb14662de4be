//! From a decision to its effect: which actions a transition asks for,
//! where each goes, and carrying them out with retries, deadlines and an
//! audit trail.

pub mod audit;
pub mod decide;
pub mod outbox;
pub mod pipeline;
pub mod routes;
