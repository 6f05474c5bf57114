//! IPMI over LAN (RMCP+ / lanplus) client.
