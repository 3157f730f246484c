//! One module per verb group; each parses its arguments into the engine's typed options,
//! calls `cage_runtime`, and prints what came back.

pub mod broker;
pub mod build;
pub mod docs;
pub mod egress;
/// In the library: the small front runs it too.
pub use cagerun::exec;
pub mod export;
pub mod generate;
pub mod host;
pub mod image;
pub mod internal;
pub mod login;
pub mod model;
pub mod observe;
pub mod runtime;
pub mod services;
