//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! NAT changes a few 16-bit words of a packet (addresses, ports); recomputing the IP and
//! TCP/UDP checksums over the whole packet would cost a pass over the payload. RFC 1624's
//! equation 3, `HC' = ~(~HC + ~m + m')`, patches the stored checksum with only the old and
//! new words and yields exactly what a full recomputation gives (property-tested in
//! `tests/userspace_packet.rs`).

/// Adds `data` as big-endian 16-bit words (an odd trailing byte is padded with zero) to a
/// 32-bit accumulator, without folding.
pub fn sum_words(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Keep headroom: fold early so a long buffer cannot overflow the accumulator.
        if acc >= 0x8000_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

/// Folds a 32-bit accumulator to 16 bits with end-around carry.
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data` starting from accumulator `acc` (the one's complement of
/// the folded one's-complement sum).
pub fn finish(acc: u32) -> u16 {
    !fold(acc)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum_words(0, data))
}

/// RFC 1624 eq. 3: the checksum after the bytes `old` were replaced by `new` (both of the
/// same even length and at an even offset of the covered data).
pub fn update(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut acc = u32::from(!checksum);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        acc += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    !fold(acc)
}

/// [`update`] for one 16-bit word.
pub fn update_word(checksum: u16, old: u16, new: u16) -> u16 {
    update(checksum, &old.to_be_bytes(), &new.to_be_bytes())
}
