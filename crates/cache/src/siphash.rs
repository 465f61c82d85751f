//! SipHash-2-4 with a 128-bit output, written out so the digest is the same in every
//! process and every version of this crate: keys computed here are shared through Redis.
//!
//! `std`'s `DefaultHasher` makes no such promise (and is randomly keyed), and the
//! algorithm is small enough to own. Checked against the reference test vectors.

/// A streaming SipHash-2-4-128 state.
#[derive(Clone, Debug)]
pub(crate) struct Sip128 {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
    /// Bytes not yet compressed, little-endian in the low `ntail` bytes.
    tail: u64,
    ntail: usize,
    length: usize,
}

impl Sip128 {
    /// A state keyed with `(k0, k1)`.
    pub(crate) const fn new(k0: u64, k1: u64) -> Self {
        Sip128 {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d ^ 0xee,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
            tail: 0,
            ntail: 0,
            length: 0,
        }
    }

    #[inline]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13) ^ self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16) ^ self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21) ^ self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17) ^ self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    #[inline]
    fn compress(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.round();
        self.v0 ^= m;
    }

    /// Absorb `bytes`.
    pub(crate) fn write(&mut self, mut bytes: &[u8]) {
        self.length = self.length.wrapping_add(bytes.len());
        if self.ntail > 0 {
            let take = (8 - self.ntail).min(bytes.len());
            for (i, &b) in bytes[..take].iter().enumerate() {
                self.tail |= u64::from(b) << (8 * (self.ntail + i));
            }
            self.ntail += take;
            bytes = &bytes[take..];
            if self.ntail < 8 {
                return;
            }
            let m = self.tail;
            self.compress(m);
            self.tail = 0;
            self.ntail = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(word);
            self.compress(u64::from_le_bytes(buf));
        }
        for (i, &b) in words.remainder().iter().enumerate() {
            self.tail |= u64::from(b) << (8 * i);
        }
        self.ntail = words.remainder().len();
    }

    /// Absorb a `u64`, little-endian.
    #[inline]
    pub(crate) fn write_u64(&mut self, value: u64) {
        self.length = self.length.wrapping_add(8);
        if self.ntail == 0 {
            self.compress(value);
            return;
        }
        let shift = 8 * self.ntail as u32;
        let m = self.tail | (value << shift);
        self.compress(m);
        self.tail = value >> (64 - shift);
    }

    /// Absorb a length prefix and then `bytes`, so concatenations cannot collide.
    #[inline]
    pub(crate) fn write_prefixed(&mut self, bytes: &[u8]) {
        self.write_u64(bytes.len() as u64);
        self.write(bytes);
    }

    /// The 16-byte digest.
    pub(crate) fn finish(mut self) -> [u8; 16] {
        let b = ((self.length as u64 & 0xff) << 56) | self.tail;
        self.compress(b);
        self.v2 ^= 0xee;
        for _ in 0..4 {
            self.round();
        }
        let lo = self.v0 ^ self.v1 ^ self.v2 ^ self.v3;
        self.v1 ^= 0xdd;
        for _ in 0..4 {
            self.round();
        }
        let hi = self.v0 ^ self.v1 ^ self.v2 ^ self.v3;
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&lo.to_le_bytes());
        out[8..].copy_from_slice(&hi.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_key() -> (u64, u64) {
        let key: Vec<u8> = (0u8..16).collect();
        (
            u64::from_le_bytes(key[..8].try_into().unwrap()),
            u64::from_le_bytes(key[8..].try_into().unwrap()),
        )
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Vectors from the SipHash reference implementation (`vectors_sip128`): key
    /// 00..0f, message 00..len-1.
    #[test]
    fn matches_reference_vectors() {
        let cases: &[(usize, &str)] = &[
            (0, "a3817f04ba25a8e66df67214c7550293"),
            (1, "da87c1d86b99af44347659119b22fc45"),
            (7, "a1f1ebbed8dbc153c0b84aa61ff08239"),
            (8, "3b62a9ba6258f5610f83e264f31497b4"),
            (15, "5493e99933b0a8117e08ec0f97cfc3d9"),
            (63, "5150d1772f50834a503e069a973fbd7c"),
        ];
        let (k0, k1) = reference_key();
        for &(len, expected) in cases {
            let message: Vec<u8> = (0..len as u8).collect();
            let mut h = Sip128::new(k0, k1);
            h.write(&message);
            assert_eq!(hex(&h.finish()), expected, "length {len}");
        }
    }

    #[test]
    fn word_writes_equal_byte_writes() {
        for offset in 0..9usize {
            let prefix: Vec<u8> = (0..offset as u8).collect();
            let mut words = Sip128::new(1, 2);
            words.write(&prefix);
            words.write_u64(0x0102_0304_0506_0708);
            words.write_u64(u64::MAX);
            let mut bytes = Sip128::new(1, 2);
            bytes.write(&prefix);
            bytes.write(&0x0102_0304_0506_0708u64.to_le_bytes());
            bytes.write(&u64::MAX.to_le_bytes());
            assert_eq!(words.finish(), bytes.finish(), "after {offset} bytes");
        }
    }

    #[test]
    fn split_writes_equal_one_write() {
        let (k0, k1) = reference_key();
        let message: Vec<u8> = (0..63u8).collect();
        let mut whole = Sip128::new(k0, k1);
        whole.write(&message);
        let whole = whole.finish();
        for split in [1usize, 3, 7, 8, 9, 17, 40] {
            let mut parts = Sip128::new(k0, k1);
            for piece in message.chunks(split) {
                parts.write(piece);
            }
            assert_eq!(parts.finish(), whole, "pieces of {split}");
        }
    }
}
