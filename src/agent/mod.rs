//! The deploy agent that runs in the ramdisk: its kernel arguments, the hardware it sees, the disk it writes, the image it streams.

pub mod client;
pub mod cmdline;
pub mod configdrive;
pub mod disks;
pub mod image;
pub mod inventory;
pub mod protocol;
pub mod runner;
pub mod wipe;
