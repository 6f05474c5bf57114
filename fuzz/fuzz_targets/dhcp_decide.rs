//! Fuzzes the DHCP path from raw datagram to reply bytes: decode, classify, decide (both modes),
//! build and encode. Run from the repository root: `cargo +nightly fuzz run -O dhcp_decide`.
//! `-O` builds as the daemon ships (no debug assertions): without it libFuzzer stops at a
//! `debug_assert!` inside dhcproto's option decoder, which debug builds of the server catch with
//! `catch_unwind` and drop as a malformed packet.
#![no_main]

use kiln::boot::dhcp::answer::{proxy, reservation};
use kiln::boot::dhcp::client::{Request, classify};
use kiln::boot::dhcp::{DhcpConfig, DhcpMode, decode, reply};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;

fuzz_target!(|data: &[u8]| {
    let Some(message) = decode(data) else { return };
    let Ok(request) = Request::from_message(&message) else { return };
    let kind = classify(&request);
    let config = DhcpConfig::new(DhcpMode::Reservation, Ipv4Addr::new(10, 0, 0, 1), 24, "http://10.0.0.1:8080".into());
    for answer in [reservation(&request, kind, Some(Ipv4Addr::new(10, 0, 0, 9)), &config), proxy(&request, kind, &config)] {
        if let Some(built) = reply::build(&message, kind, &answer, &config) {
            let _ = reply::encode(&built);
        }
    }
});
