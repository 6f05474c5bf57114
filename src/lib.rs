//! Kiln: a bare-metal provisioning appliance. The binaries in `src/bin` only wire these modules.

pub mod agent;
pub mod api;
pub mod bmc;
pub mod boot;
pub mod ca;
pub mod civil;
pub mod cli;
pub mod conductor;
pub mod deployer;
pub mod images;
pub mod inventory;
pub mod lab;
pub mod model;
pub mod pipeline;
pub mod sim;
pub mod store;
