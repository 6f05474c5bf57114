//! RFC 2347 option negotiation: which of the client's options the server accepts (RFC 2348
//! blksize, 2349 timeout and tsize, 7440 windowsize), within the configured limits, and the
//! parameters the transfer then runs with. Pure, so every limit is tested table-driven.

use std::time::Duration;

use super::TftpConfig;
use super::packet::{DEFAULT_BLOCK_SIZE, Options};

/// RFC 2348's range for blksize.
const BLOCK_SIZES: std::ops::RangeInclusive<u64> = 8..=65464;
/// RFC 2349's range for timeout, in seconds.
const TIMEOUTS: std::ops::RangeInclusive<u64> = 1..=255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Negotiated {
    pub block_size: u16,
    pub window_size: u16,
    pub timeout: Duration,
    /// The options acknowledged, in OACK order; empty means no OACK, the first DATA answers.
    pub oack: Vec<(&'static str, u64)>,
}

/// The transfer parameters for a read of a `file_size`-byte file. A blksize or windowsize above
/// the limit is answered with the limit (RFC 2348 lets the server lower it); a value outside
/// the RFC's range is left unacknowledged, so the client falls back to the default.
pub(super) fn negotiate(requested: &Options, config: &TftpConfig, file_size: u64) -> Negotiated {
    let mut oack = Vec::new();
    let block_limit = config.block_size_limit.map_or(u16::MAX, |l| l.max(8));
    let block_size = requested
        .blksize
        .filter(|size| *size >= *BLOCK_SIZES.start())
        .map(|size| clamp_u16(size.min(*BLOCK_SIZES.end()), block_limit));
    if let Some(size) = block_size {
        oack.push(("blksize", u64::from(size)));
    }
    if requested.tsize == Some(0) {
        oack.push(("tsize", file_size));
    }
    let timeout = requested.timeout.filter(|t| TIMEOUTS.contains(t));
    if let Some(seconds) = timeout {
        oack.push(("timeout", seconds));
    }
    let window_limit = config.window_size_limit.map_or(u16::MAX, |l| l.max(1));
    let window_size = requested
        .windowsize
        .filter(|size| *size >= 1)
        .map(|size| clamp_u16(size, window_limit));
    if let Some(size) = window_size {
        oack.push(("windowsize", u64::from(size)));
    }
    Negotiated {
        block_size: block_size.unwrap_or(DEFAULT_BLOCK_SIZE),
        window_size: window_size.unwrap_or(1),
        timeout: timeout.map_or(config.timeout, Duration::from_secs),
        oack,
    }
}

fn clamp_u16(value: u64, limit: u16) -> u16 {
    u16::try_from(value).map_or(limit, |v| v.min(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(block: Option<u16>, window: Option<u16>) -> TftpConfig {
        TftpConfig {
            block_size_limit: block,
            window_size_limit: window,
            ..TftpConfig::default()
        }
    }

    /// What the client asked, the server's limits, (blksize, windowsize, timeout), the OACK.
    type Case<'a> = (
        &'a str,
        Options,
        TftpConfig,
        (u16, u16, Duration),
        &'a [(&'a str, u64)],
    );

    #[test]
    fn options_are_negotiated_within_limits() {
        let none = Options::default();
        let default_timeout = TftpConfig::default().timeout;
        #[rustfmt::skip]
        let cases: &[Case<'_>] = &[
            ("no options: RFC 1350 defaults, no OACK", none, config(None, None), (512, 1, default_timeout), &[]),
            ("iPXE's blksize", Options { blksize: Some(1468), ..none }, config(None, None), (1468, 1, default_timeout), &[("blksize", 1468)]),
            ("blksize capped by the limit", Options { blksize: Some(1468), ..none }, config(Some(1024), None), (1024, 1, default_timeout), &[("blksize", 1024)]),
            ("blksize below the limit kept", Options { blksize: Some(512), ..none }, config(Some(1024), None), (512, 1, default_timeout), &[("blksize", 512)]),
            ("blksize above RFC maximum lowered", Options { blksize: Some(70_000), ..none }, config(None, None), (65464, 1, default_timeout), &[("blksize", 65464)]),
            ("huge blksize lowered", Options { blksize: Some(u64::MAX), ..none }, config(Some(1400), None), (1400, 1, default_timeout), &[("blksize", 1400)]),
            ("blksize below 8 not acknowledged", Options { blksize: Some(7), ..none }, config(None, None), (512, 1, default_timeout), &[]),
            ("a limit below 8 still allows 8", Options { blksize: Some(100), ..none }, config(Some(2), None), (8, 1, default_timeout), &[("blksize", 8)]),
            ("tsize 0 answered with the size", Options { tsize: Some(0), ..none }, config(None, None), (512, 1, default_timeout), &[("tsize", 73_000)]),
            ("tsize other than 0 ignored", Options { tsize: Some(5), ..none }, config(None, None), (512, 1, default_timeout), &[]),
            ("timeout honoured", Options { timeout: Some(1), ..none }, config(None, None), (512, 1, Duration::from_secs(1)), &[("timeout", 1)]),
            ("timeout 0 ignored", Options { timeout: Some(0), ..none }, config(None, None), (512, 1, default_timeout), &[]),
            ("timeout over 255 ignored", Options { timeout: Some(256), ..none }, config(None, None), (512, 1, default_timeout), &[]),
            ("windowsize honoured", Options { windowsize: Some(16), ..none }, config(None, None), (512, 16, default_timeout), &[("windowsize", 16)]),
            ("windowsize capped", Options { windowsize: Some(16), ..none }, config(None, Some(4)), (512, 4, default_timeout), &[("windowsize", 4)]),
            ("windowing off", Options { windowsize: Some(16), ..none }, config(None, Some(1)), (512, 1, default_timeout), &[("windowsize", 1)]),
            ("windowsize 0 ignored", Options { windowsize: Some(0), ..none }, config(None, None), (512, 1, default_timeout), &[]),
            ("windowsize over u16 capped", Options { windowsize: Some(1 << 20), ..none }, config(None, None), (512, 65535, default_timeout), &[("windowsize", 65535)]),
            (
                "all four, in OACK order",
                Options { blksize: Some(1432), timeout: Some(2), tsize: Some(0), windowsize: Some(8) },
                config(None, None),
                (1432, 8, Duration::from_secs(2)),
                &[("blksize", 1432), ("tsize", 73_000), ("timeout", 2), ("windowsize", 8)],
            ),
        ];
        for (what, requested, config, (block_size, window_size, timeout), oack) in cases {
            let want = Negotiated {
                block_size: *block_size,
                window_size: *window_size,
                timeout: *timeout,
                oack: oack.to_vec(),
            };
            assert_eq!(negotiate(requested, config, 73_000), want, "{what}");
        }
    }
}
