//! One module per verb group; each parses its arguments into the engine's typed options,
//! calls `cage_runtime`, and prints what came back.

pub mod build;
pub mod docs;
pub mod egress;
pub mod exec;
pub mod generate;
pub mod host;
pub mod image;
pub mod internal;
pub mod login;
pub mod model;
pub mod observe;
pub mod runtime;
pub mod services;
