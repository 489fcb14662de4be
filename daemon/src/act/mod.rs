//! From a decision to its effect: which actions a transition asks for
//! ([`decide`]), where each goes ([`routes`]), carrying them out with
//! retries and deadlines ([`pipeline`]), keeping the unfinished ones for a
//! checkpoint ([`outbox`]), and the audit trail ([`audit`]).

pub mod audit;
pub mod decide;
pub mod outbox;
pub mod pipeline;
pub mod routes;
