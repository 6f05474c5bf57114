//! The container deployer, in the spirit of Kolla-ansible: a service catalog as data, rendered
//! per host (minijinja), reconciled against each host's Docker Engine as a dependency graph.
//! Nothing that is already as desired is touched: each container carries the hash of its full
//! spec as a label.
//!
//! Flow: [`catalog`] + [`hosts`] + [`globals`] → [`render`] (pure) → [`run`] (plans with
//! [`plan`], acts through an [`engine::Engine`]).

pub mod catalog;
pub mod engine;
pub mod globals;
pub mod hosts;
pub mod plan;
pub mod render;
pub mod run;
#[cfg(test)]
mod run_tests;
pub mod spec;
