//! Lifetime reconstruction: the pure core. Decoded events in (in timestamp order, see
//! [`crate::reorder`]), lifetimes out. No I/O.
//!
//! A lifetime is one socket's hold on one local port, from assignment to release. A TCP
//! socket that enters TIME_WAIT hands its port to a TIME_WAIT socket: the lifetime goes on
//! until that one dies, and the time in TIME_WAIT is measured on its own.

mod record;
mod tracker;

pub use record::*;
pub use tracker::*;

#[cfg(test)]
mod tests;
