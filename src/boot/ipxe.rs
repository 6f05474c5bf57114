//! Placeholder: filled in by the boot-services work.
