//! Block arithmetic of one transfer: which bytes each block carries, which blocks the next
//! window holds, and what an ACK acknowledges. Blocks are counted in `u64` and only their low
//! 16 bits go on the wire, so files beyond 65535 blocks roll over to block 0 (as tftp-hpa,
//! dnsmasq, iPXE and curl expect). Pure.

use std::ops::RangeInclusive;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Blocks {
    len: u64,
    block_size: u64,
    /// The number of the last block, the first one shorter than `block_size` (possibly empty).
    last: u64,
    /// The highest block the client acknowledged; 0 before any.
    acked: u64,
}

/// What an ACK means to the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ack {
    /// Acknowledges blocks up to this one (counted, not as on the wire).
    Through(u64),
    /// Repeats the last acknowledgement. Not answered: answering duplicates is the Sorcerer's
    /// Apprentice bug (RFC 1123 4.2.3.1), and with windows it would resend what is in flight.
    Duplicate,
    /// Names a block that was never sent or was acknowledged long ago: ignored.
    Stale,
}

impl Blocks {
    pub fn new(len: u64, block_size: u16) -> Self {
        let block_size = u64::from(block_size.max(1));
        Self {
            len,
            block_size,
            last: len / block_size + 1,
            acked: 0,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.acked == self.last
    }

    /// The next window: up to `size` blocks after the last acknowledged one.
    pub fn window(&self, size: u16) -> RangeInclusive<u64> {
        let end = self.acked.saturating_add(u64::from(size.max(1)));
        self.acked + 1..=end.min(self.last)
    }

    /// The part of `file` (the transfer's `len` bytes) that `block` carries.
    pub fn payload<'a>(&self, file: &'a [u8], block: u64) -> &'a [u8] {
        let start = self.bytes_through(block.saturating_sub(1));
        let end = self.bytes_through(block);
        let index = |at: u64| usize::try_from(at).unwrap_or(usize::MAX);
        file.get(index(start)..index(end)).unwrap_or_default()
    }

    /// How many bytes of the file blocks 1 to `block` carry.
    pub fn bytes_through(&self, block: u64) -> u64 {
        block.saturating_mul(self.block_size).min(self.len)
    }

    /// Reads an ACK received while blocks up to `sent_through` are out.
    pub fn classify(&self, ack: u16, sent_through: u64) -> Ack {
        let ahead = u64::from(ack.wrapping_sub(wire(self.acked)));
        if ahead == 0 {
            Ack::Duplicate
        } else if ahead <= sent_through.saturating_sub(self.acked) {
            Ack::Through(self.acked + ahead)
        } else {
            Ack::Stale
        }
    }

    pub fn acknowledge(&mut self, through: u64) {
        self.acked = self.acked.max(through.min(self.last));
    }
}

/// A block's number on the wire.
pub(super) fn wire(block: u64) -> u16 {
    (block & 0xffff) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_split_into_blocks_ending_with_a_short_one() {
        // (len, blksize, last block, length of the last block)
        let cases = [
            (0, 512, 1, 0),
            (1, 512, 1, 1),
            (511, 512, 1, 511),
            (512, 512, 2, 0),
            (4096, 512, 9, 0),
            (73_000, 1468, 50, 1068),
            (10_000, 1024, 10, 784),
        ];
        for (len, block_size, last, last_len) in cases {
            let file = vec![7u8; len];
            let blocks = Blocks::new(len as u64, block_size);
            assert_eq!(blocks.last, last, "{len}/{block_size}");
            assert_eq!(
                blocks.payload(&file, last).len(),
                last_len,
                "{len}/{block_size}"
            );
            let total: usize = (1..=last).map(|b| blocks.payload(&file, b).len()).sum();
            assert_eq!(total, len, "{len}/{block_size}: blocks cover the file");
            assert!(blocks.payload(&file, last + 1).is_empty());
            assert_eq!(blocks.bytes_through(last), len as u64);
        }
    }

    #[test]
    fn windows_stop_at_the_last_block() {
        let mut blocks = Blocks::new(10_000, 1024); // blocks 1..=10
        assert_eq!(blocks.window(1), 1..=1);
        assert_eq!(blocks.window(4), 1..=4);
        assert_eq!(blocks.window(0), 1..=1, "windowsize 0 means 1");
        blocks.acknowledge(8);
        assert_eq!(blocks.window(4), 9..=10);
        blocks.acknowledge(10);
        assert!(blocks.is_complete());
        blocks.acknowledge(3);
        assert!(blocks.is_complete(), "never goes back");
    }

    #[test]
    fn acks_are_read_relative_to_what_was_sent() {
        let at = |acked: u64| {
            let mut blocks = Blocks::new(1 << 30, 8);
            blocks.acknowledge(acked);
            blocks
        };
        // (acknowledged so far, sent through, ACK on the wire, meaning)
        let cases = [
            (0, 1, 1, Ack::Through(1)),
            (0, 1, 0, Ack::Duplicate),
            (0, 1, 2, Ack::Stale),
            (0, 4, 2, Ack::Through(2)),
            (2, 4, 2, Ack::Duplicate),
            (2, 4, 1, Ack::Stale),
            (2, 4, 4, Ack::Through(4)),
            (2, 4, 5, Ack::Stale),
            // Across the rollover: block 65536 is 0 on the wire, 65537 is 1.
            (65535, 65536, 0, Ack::Through(65536)),
            (65535, 65536, 65535, Ack::Duplicate),
            (65534, 65538, 1, Ack::Through(65537)),
            (65536, 65537, 0, Ack::Duplicate),
            (65536, 65537, 65535, Ack::Stale),
            (131_071, 131_072, 0, Ack::Through(131_072)),
        ];
        for (acked, sent, ack, want) in cases {
            assert_eq!(
                at(acked).classify(ack, sent),
                want,
                "acked {acked}, sent {sent}, ACK {ack}"
            );
        }
        assert_eq!(wire(65535), 65535);
        assert_eq!(wire(65536), 0);
        assert_eq!(wire(65537), 1);
    }
}
