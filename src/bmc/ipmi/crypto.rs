//! RMCP+ cryptography: the RAKP key-exchange codes, session keys (SIK, K1, K2), the per-packet
//! integrity code and AES-CBC-128 with IPMI's own padding. Pure functions, tested against vectors
//! computed independently (Python `hmac`, OpenSSL), so a byte-order slip shows up here and not as
//! a mysterious "wrong password" against a real BMC.

use aes::Aes128;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use std::fmt;

/// The cipher suites Kiln speaks. Both use AES-CBC-128 for confidentiality.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherSuite {
    /// RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128: what every BMC and ipmi_sim accept.
    Three,
    /// RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128: the default of newer BMCs.
    Seventeen,
}

impl CipherSuite {
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            3 => Some(Self::Three),
            17 => Some(Self::Seventeen),
            _ => None,
        }
    }

    pub fn id(self) -> u8 {
        match self {
            Self::Three => 3,
            Self::Seventeen => 17,
        }
    }

    /// Algorithm numbers offered in Open Session: (authentication, integrity, confidentiality).
    pub fn algorithms(self) -> (u8, u8, u8) {
        match self {
            Self::Three => (0x01, 0x01, 0x01),
            Self::Seventeen => (0x03, 0x04, 0x01),
        }
    }

    /// Length of the RAKP 2 and RAKP 3 key-exchange codes: the whole HMAC.
    pub fn hmac_len(self) -> usize {
        match self {
            Self::Three => 20,
            Self::Seventeen => 32,
        }
    }

    /// Length of the RAKP 4 check value and of every packet's integrity code (truncated HMAC).
    pub fn icv_len(self) -> usize {
        match self {
            Self::Three => 12,
            Self::Seventeen => 16,
        }
    }

    /// HMAC over the concatenation of `parts`.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Self::Three => mac::<Hmac<Sha1>>(key, parts),
            Self::Seventeen => mac::<Hmac<Sha256>>(key, parts),
        }
    }

    /// The integrity code (AuthCode) of one packet, keyed with K1.
    pub fn auth_code(self, k1: &[u8], data: &[u8]) -> Vec<u8> {
        let mut code = self.hmac(k1, &[data]);
        code.truncate(self.icv_len());
        code
    }
}

fn mac<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes keys of any length, so this never fails; an empty code would fail every check.
    let Ok(mut m) = <M as KeyInit>::new_from_slice(key) else {
        return Vec::new();
    };
    for part in parts {
        m.update(part);
    }
    m.finalize().into_bytes().to_vec()
}

/// Compares two codes without an early exit, so timing does not reveal how much matched.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The keys of one active session. `Debug` shows nothing of them.
pub struct SessionKeys {
    pub sik: Vec<u8>,
    /// Integrity key.
    pub k1: Vec<u8>,
    /// Confidentiality key: the first 16 bytes of K2.
    pub aes: [u8; 16],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

/// What both ends mix into the RAKP codes. Nothing here is secret: it all crosses the wire.
#[derive(Clone, Debug)]
pub struct Rakp<'a> {
    pub suite: CipherSuite,
    /// SIDm: the session ID Kiln chose.
    pub console_id: u32,
    /// SIDc: the session ID the BMC chose.
    pub bmc_id: u32,
    pub console_random: [u8; 16],
    pub bmc_random: [u8; 16],
    pub bmc_guid: [u8; 16],
    /// Requested role byte exactly as sent in RAKP 1 (privilege plus lookup bit).
    pub role: u8,
    pub username: &'a [u8],
}

impl Rakp<'_> {
    fn name_len(&self) -> [u8; 1] {
        [self.username.len() as u8]
    }

    /// The BMC's proof in RAKP 2 that it knows the password (Kuid).
    pub fn rakp2_code(&self, kuid: &[u8]) -> Vec<u8> {
        let (m, c) = (self.console_id.to_le_bytes(), self.bmc_id.to_le_bytes());
        self.suite.hmac(
            kuid,
            &[
                &m,
                &c,
                &self.console_random,
                &self.bmc_random,
                &self.bmc_guid,
                &[self.role],
                &self.name_len(),
                self.username,
            ],
        )
    }

    /// Kiln's proof in RAKP 3.
    pub fn rakp3_code(&self, kuid: &[u8]) -> Vec<u8> {
        let m = self.console_id.to_le_bytes();
        self.suite.hmac(
            kuid,
            &[
                &self.bmc_random,
                &m,
                &[self.role],
                &self.name_len(),
                self.username,
            ],
        )
    }

    /// SIK = HMAC_Kg(Rm | Rc | role | name length | name); K1 and K2 = HMAC_SIK(20 × 01h / 02h).
    /// Kiln has no BMC key, so Kg is the password, as for `ipmitool` without `-k`.
    pub fn session_keys(&self, kg: &[u8]) -> SessionKeys {
        let sik = self.suite.hmac(
            kg,
            &[
                &self.console_random,
                &self.bmc_random,
                &[self.role],
                &self.name_len(),
                self.username,
            ],
        );
        let k1 = self.suite.hmac(&sik, &[&[0x01; 20]]);
        let k2 = self.suite.hmac(&sik, &[&[0x02; 20]]);
        let mut aes = [0u8; 16];
        for (dst, src) in aes.iter_mut().zip(&k2) {
            *dst = *src;
        }
        SessionKeys { sik, k1, aes }
    }

    /// The BMC's integrity check value in RAKP 4, keyed with the SIK.
    pub fn rakp4_icv(&self, sik: &[u8]) -> Vec<u8> {
        let c = self.bmc_id.to_le_bytes();
        let mut icv = self
            .suite
            .hmac(sik, &[&self.console_random, &c, &self.bmc_guid]);
        icv.truncate(self.suite.icv_len());
        icv
    }
}

/// Encrypts an IPMI payload: IV, then AES-CBC of payload + pad bytes 1, 2, … + pad length.
pub fn encrypt(key: &[u8; 16], iv: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let pad = (16 - (payload.len() + 1) % 16) % 16;
    let mut out = Vec::with_capacity(16 + payload.len() + pad + 1);
    out.extend_from_slice(&iv);
    out.extend_from_slice(payload);
    out.extend(1..=pad as u8);
    out.push(pad as u8);
    let mut cipher = cbc::Encryptor::<Aes128>::new(key.into(), (&iv).into());
    for block in out[16..].chunks_exact_mut(16) {
        cipher.encrypt_block_mut(block.into());
    }
    out
}

/// Reverses [`encrypt`], checking the length and the padding.
pub fn decrypt(key: &[u8; 16], data: &[u8]) -> Result<Vec<u8>, &'static str> {
    if data.len() < 32 || !data.len().is_multiple_of(16) {
        return Err("encrypted payload is not whole AES blocks");
    }
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&data[..16]);
    let mut plain = data[16..].to_vec();
    let mut cipher = cbc::Decryptor::<Aes128>::new(key.into(), (&iv).into());
    for block in plain.chunks_exact_mut(16) {
        cipher.decrypt_block_mut(block.into());
    }
    let pad = usize::from(plain.last().copied().unwrap_or(0xff));
    if pad > 15 {
        return Err("bad confidentiality pad length");
    }
    let body = plain.len() - 1 - pad;
    if !plain[body..body + pad]
        .iter()
        .zip(1u8..)
        .all(|(b, want)| *b == want)
    {
        return Err("bad confidentiality padding");
    }
    plain.truncate(body);
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn rakp(suite: CipherSuite) -> Rakp<'static> {
        let mut console_random = [0u8; 16];
        let mut bmc_random = [0u8; 16];
        for i in 0..16u8 {
            console_random[usize::from(i)] = i;
            bmc_random[usize::from(i)] = 0x10 + i;
        }
        let mut bmc_guid = [0u8; 16];
        bmc_guid.copy_from_slice(&hex("a123456789abcdefa123456789abcdef"));
        Rakp {
            suite,
            console_id: 0xA0A1_A2A3,
            bmc_id: 0x0000_0402,
            console_random,
            bmc_random,
            bmc_guid,
            role: 0x14,
            username: b"admin",
        }
    }

    /// Known answers computed with Python's `hmac` from the IPMI v2.0 formulas (section 13.31/32).
    #[test]
    fn rakp_codes_and_session_keys_match_known_answers() {
        struct Case {
            suite: CipherSuite,
            rakp2: &'static str,
            rakp3: &'static str,
            sik: &'static str,
            k1: &'static str,
            k2_head: &'static str,
            rakp4: &'static str,
        }
        let cases = [
            Case {
                suite: CipherSuite::Three,
                rakp2: "f30ee9e6122bb1f8515629751d7a9e4317c506fc",
                rakp3: "7fc6db6b1f57b356a4a457a8df87c8d2d6aecdd9",
                sik: "122c77c4b11ccd93251cbae6c34a9cb6310da154",
                k1: "e4472be78f9a81fa68297aab696a7be8c97fc9f8",
                k2_head: "2b6552012a2517cb3b5713901d757a6e",
                rakp4: "35cf19b04a5a1e29f21bcced",
            },
            Case {
                suite: CipherSuite::Seventeen,
                rakp2: "cef35a1c10a749d12b2ffdda6e5577bea58e281ac6b423eaedb7a801cd7c6ab8",
                rakp3: "90267bdbb30b252a36ad5b8c20ad30167c5fda508a1097ee0d53dd1745bfd58c",
                sik: "e5935f7199865ad961063477b0662684e2ce9b1da8f2b8d41c5ce127d37e9bcf",
                k1: "dc4fe73d075306f6897115dd63257385e845c10404fa1d73991790c6a101bec2",
                k2_head: "2a4f969ea6dfa83066f36674fdc2fea2",
                rakp4: "f6d16514e67b1fc797afb7bed05fa025",
            },
        ];
        for case in cases {
            let r = rakp(case.suite);
            // Zero-padding the password to 20 bytes (as the spec words it) changes nothing in HMAC.
            for kuid in [&b"password"[..], b"password\0\0\0\0\0\0\0\0\0\0\0\0"] {
                assert_eq!(r.rakp2_code(kuid), hex(case.rakp2), "{:?}", case.suite);
                assert_eq!(r.rakp3_code(kuid), hex(case.rakp3), "{:?}", case.suite);
                let keys = r.session_keys(kuid);
                assert_eq!(keys.sik, hex(case.sik));
                assert_eq!(keys.k1, hex(case.k1));
                assert_eq!(keys.aes.to_vec(), hex(case.k2_head));
                assert_eq!(r.rakp4_icv(&keys.sik), hex(case.rakp4));
                assert_eq!(format!("{keys:?}"), "SessionKeys(..)");
            }
            assert_ne!(r.rakp2_code(b"Password"), hex(case.rakp2));
        }
    }

    #[test]
    fn aes_matches_openssl_and_round_trips() {
        let key: [u8; 16] = hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
        let iv: [u8; 16] = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").try_into().unwrap();
        let msg = hex("20181c81040001");
        let sealed = encrypt(&key, iv, &msg);
        assert_eq!(
            sealed,
            hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfefffbedd650f66e1326f05cec0cf0d34089")
        );
        assert_eq!(decrypt(&key, &sealed).unwrap(), msg);
        for len in [0usize, 1, 14, 15, 16, 17, 31, 32, 100] {
            let payload: Vec<u8> = (0..len as u8).collect();
            let sealed = encrypt(&key, iv, &payload);
            assert_eq!(sealed.len() % 16, 0, "len {len}");
            assert_eq!(decrypt(&key, &sealed).unwrap(), payload, "len {len}");
        }
    }

    #[test]
    fn decrypt_rejects_bad_lengths_and_padding() {
        let key = [7u8; 16];
        assert!(decrypt(&key, &[0u8; 16]).is_err());
        assert!(decrypt(&key, &[0u8; 33]).is_err());
        let mut sealed = encrypt(&key, [1u8; 16], b"abc");
        let last = sealed.len() - 1;
        sealed[last] ^= 0x55;
        assert!(decrypt(&key, &sealed).is_err());
        assert!(decrypt(&[8u8; 16], &encrypt(&key, [1u8; 16], b"abc")).is_err());
    }

    #[test]
    fn suites_name_their_algorithms() {
        assert_eq!(CipherSuite::from_id(3), Some(CipherSuite::Three));
        assert_eq!(
            CipherSuite::from_id(17).map(CipherSuite::algorithms),
            Some((3, 4, 1))
        );
        assert_eq!(CipherSuite::from_id(1), None);
        assert_eq!(CipherSuite::Three.auth_code(&[1; 20], b"x").len(), 12);
        assert_eq!(CipherSuite::Seventeen.auth_code(&[1; 32], b"x").len(), 16);
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
    }

    proptest::proptest! {
        #[test]
        fn decrypt_never_panics(key in proptest::array::uniform16(0u8..), data in proptest::collection::vec(0u8.., 0..200)) {
            let _ = decrypt(&key, &data);
        }
    }
}
