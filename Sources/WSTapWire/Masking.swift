/// XOR masking (RFC 6455 §5.3). `offset` is the position of `bytes[0]` inside the frame payload, so
/// a payload that arrives in pieces unmasks correctly piece by piece.
public enum Masking {
    public static func apply(key: UInt32, offset: UInt64, to bytes: UnsafeMutableRawBufferPointer) {
        let keyBytes: (UInt8, UInt8, UInt8, UInt8) = (
            UInt8(truncatingIfNeeded: key >> 24), UInt8(truncatingIfNeeded: key >> 16),
            UInt8(truncatingIfNeeded: key >> 8), UInt8(truncatingIfNeeded: key))
        var phase = Int(offset & 3)
        var i = 0
        let count = bytes.count
        // Byte loop until the key phase is 0, then 8 bytes at a time with the key repeated.
        while i < count && phase != 0 {
            bytes[i] ^= phase == 1 ? keyBytes.1 : phase == 2 ? keyBytes.2 : keyBytes.3
            i += 1
            phase = (phase + 1) & 3
        }
        let word32 = UInt32(keyBytes.0) | UInt32(keyBytes.1) << 8 | UInt32(keyBytes.2) << 16 | UInt32(keyBytes.3) << 24
        let word64 = UInt64(word32) | UInt64(word32) << 32  // little-endian memory order of the key
        while i + 8 <= count {
            let value = bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            bytes.storeBytes(of: value ^ word64, toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < count {
            bytes[i] ^= phase == 0 ? keyBytes.0 : phase == 1 ? keyBytes.1 : phase == 2 ? keyBytes.2 : keyBytes.3
            i += 1
            phase = (phase + 1) & 3
        }
    }

    public static func apply(key: UInt32, offset: UInt64, to bytes: inout [UInt8]) {
        bytes.withUnsafeMutableBytes { apply(key: key, offset: offset, to: $0) }
    }
}
