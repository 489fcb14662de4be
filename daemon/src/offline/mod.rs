//! The commands that need no broker: `check`, `test` and `replay`.

pub mod check;
pub mod replay;
pub mod ruletest;
