//! Redfish client.
