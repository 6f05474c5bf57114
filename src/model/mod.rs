//! Domain types of Kiln: nodes, their hardware description and the provisioning state machine. No I/O.

mod node;
mod secret;
mod state;

pub use node::{
    BmcKind, BmcSpec, BootMode, ImageChecksum, ImageSpec, MacAddress, NetworkSpec, Nic, Node,
    NodeSpec, Properties, Role, RootDeviceHints, ServicesStatus, TlsVerify,
};
pub use secret::Secret;
pub use state::{Event, Input, InvalidTransition, ProvisionState, Step, Verb, next};
