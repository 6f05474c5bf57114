//! DHCPv4 server (reservation and proxy modes).
