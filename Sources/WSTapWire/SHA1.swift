/// SHA-1 (FIPS 180-4), only for `Sec-WebSocket-Accept` (RFC 6455 §4.2.2), where the protocol fixes the
/// algorithm. Small enough to keep here rather than pull a crypto library into the sans-IO core.
enum SHA1 {
    static func hash(_ message: [UInt8]) -> [UInt8] {
        var h: (UInt32, UInt32, UInt32, UInt32, UInt32) = (0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0)
        var data = message
        let bitLength = UInt64(message.count) * 8
        data.append(0x80)
        while data.count % 64 != 56 { data.append(0) }
        for shift in stride(from: 56, through: 0, by: -8) { data.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift))) }
        var w = [UInt32](repeating: 0, count: 80)
        for chunk in stride(from: 0, to: data.count, by: 64) {
            for i in 0..<16 {
                let j = chunk + i * 4
                w[i] = UInt32(data[j]) << 24 | UInt32(data[j + 1]) << 16 | UInt32(data[j + 2]) << 8 | UInt32(data[j + 3])
            }
            for i in 16..<80 { w[i] = rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1) }
            var (a, b, c, d, e) = h
            for i in 0..<80 {
                let (f, k): (UInt32, UInt32)
                switch i {
                case 0..<20: (f, k) = ((b & c) | (~b & d), 0x5A82_7999)
                case 20..<40: (f, k) = (b ^ c ^ d, 0x6ED9_EBA1)
                case 40..<60: (f, k) = ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC)
                default: (f, k) = (b ^ c ^ d, 0xCA62_C1D6)
                }
                let temp = rotl(a, 5) &+ f &+ e &+ k &+ w[i]
                (e, d, c, b, a) = (d, c, rotl(b, 30), a, temp)
            }
            h = (h.0 &+ a, h.1 &+ b, h.2 &+ c, h.3 &+ d, h.4 &+ e)
        }
        var out: [UInt8] = []
        for word in [h.0, h.1, h.2, h.3, h.4] {
            for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: word >> UInt32(shift))) }
        }
        return out
    }

    private static func rotl(_ x: UInt32, _ n: UInt32) -> UInt32 { x << n | x >> (32 - n) }
}

public enum Base64 {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        bytes.withUnsafeBytes { encode($0, into: &out) }
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends the base64 text of `bytes` to `out`.
    public static func encode(_ bytes: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        let start = out.count
        out.append(contentsOf: repeatElement(0, count: (bytes.count + 2) / 3 * 4))
        out.withUnsafeMutableBytes { dest in
            _ = encode(bytes, to: UnsafeMutableRawBufferPointer(rebasing: dest[start...]))
        }
    }

    /// Every 12-bit value as its two base64 characters, first character in the low byte: two lookups
    /// and one store per three input bytes instead of four of each.
    private static let pairs: [UInt16] = (0..<4096).map { UInt16(alphabet[$0 >> 6]) | UInt16(alphabet[$0 & 63]) << 8 }

    /// Writes the base64 text of `bytes` to `dest`, which must hold `(count + 2) / 3 * 4` bytes;
    /// returns how many it wrote. Non-generic and pointer-based on purpose: records carry up to
    /// 64 KiB payload previews, and base64 is most of the time spent encoding a binary-heavy capture.
    public static func encode(_ bytes: UnsafeRawBufferPointer, to dest: UnsafeMutableRawBufferPointer) -> Int {
        let count = bytes.count
        let produced = (count + 2) / 3 * 4
        precondition(dest.count >= produced, "base64 destination too small")
        guard count > 0, let input = bytes.baseAddress, let output = dest.baseAddress else { return 0 }
        pairs.withUnsafeBufferPointer { pairs in
            let pair = pairs.baseAddress!
            var i = 0
            var o = 0
            // Six bytes in, eight characters out, from one eight-byte load (so stop 8 bytes short).
            while i + 8 <= count {
                let word = UInt64(bigEndian: (input + i).loadUnaligned(as: UInt64.self))
                let text = UInt64(pair[Int(truncatingIfNeeded: word >> 52)])
                    | UInt64(pair[Int(truncatingIfNeeded: word >> 40) & 0xFFF]) << 16
                    | UInt64(pair[Int(truncatingIfNeeded: word >> 28) & 0xFFF]) << 32
                    | UInt64(pair[Int(truncatingIfNeeded: word >> 16) & 0xFFF]) << 48
                (output + o).storeBytes(of: UInt64(littleEndian: text), as: UInt64.self)
                i += 6
                o += 8
            }
            while i + 3 <= count {
                let v = Int(input.load(fromByteOffset: i, as: UInt8.self)) << 16
                    | Int(input.load(fromByteOffset: i + 1, as: UInt8.self)) << 8 | Int(input.load(fromByteOffset: i + 2, as: UInt8.self))
                let text = UInt32(pair[v >> 12]) | UInt32(pair[v & 0xFFF]) << 16
                (output + o).storeBytes(of: UInt32(littleEndian: text), as: UInt32.self)
                i += 3
                o += 4
            }
            if i < count {
                let second = i + 1 < count ? Int(input.load(fromByteOffset: i + 1, as: UInt8.self)) : 0
                let v = Int(input.load(fromByteOffset: i, as: UInt8.self)) << 16 | second << 8
                let first = pair[v >> 12]
                output.storeBytes(of: UInt8(truncatingIfNeeded: first), toByteOffset: o, as: UInt8.self)
                output.storeBytes(of: UInt8(truncatingIfNeeded: first >> 8), toByteOffset: o + 1, as: UInt8.self)
                output.storeBytes(of: i + 1 < count ? UInt8(truncatingIfNeeded: pair[v & 0xFFF]) : UInt8(ascii: "="), toByteOffset: o + 2, as: UInt8.self)
                output.storeBytes(of: UInt8(ascii: "="), toByteOffset: o + 3, as: UInt8.self)
            }
        }
        return produced
    }
}

public enum HandshakeAccept {
    /// RFC 6455 §1.3: base64(SHA-1(key + GUID)). The key is used as sent (trimmed of header whitespace).
    public static func expected(forKey key: String) -> String {
        Base64.encode(SHA1.hash(Array((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8)))
    }
}
