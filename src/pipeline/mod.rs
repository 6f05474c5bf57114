//! `kiln deploy-servers` and `kiln reset`: racked hardware to a running cloud in one command.
//! Provisioning (through the daemon's API) and the container deployer run as one pipeline: each
//! node is handed to the deployer the moment it is active, with no rack-wide barrier.

pub mod drive;
pub mod phase;
