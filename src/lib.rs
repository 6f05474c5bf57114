//! Kiln: a bare-metal provisioning appliance. The binaries in `src/bin` only wire these modules.

pub mod inventory;
pub mod model;
