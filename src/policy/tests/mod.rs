//! Tests of the policy layer.

mod golden;
mod labels;
mod parse_errors;
mod resolve;
mod selector;
