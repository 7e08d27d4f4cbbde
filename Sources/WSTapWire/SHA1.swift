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

    /// Writes the base64 text of `bytes` to `dest`, which must hold `(count + 2) / 3 * 4` bytes;
    /// returns how many it wrote. Non-generic and pointer-based on purpose: records carry up to
    /// 64 KiB payload previews, and a generic version was the relay's hottest code.
    public static func encode(_ bytes: UnsafeRawBufferPointer, to dest: UnsafeMutableRawBufferPointer) -> Int {
        let count = bytes.count
        let produced = (count + 2) / 3 * 4
        precondition(dest.count >= produced, "base64 destination too small")
        alphabet.withUnsafeBufferPointer { table in
            var o = 0
            var i = 0
            while i + 3 <= count {
                let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
                dest[o] = table[Int(v >> 18)]
                dest[o + 1] = table[Int(v >> 12 & 63)]
                dest[o + 2] = table[Int(v >> 6 & 63)]
                dest[o + 3] = table[Int(v & 63)]
                i += 3
                o += 4
            }
            if i < count {
                let b1: UInt32 = i + 1 < count ? UInt32(bytes[i + 1]) : 0
                let v = UInt32(bytes[i]) << 16 | b1 << 8
                dest[o] = table[Int(v >> 18)]
                dest[o + 1] = table[Int(v >> 12 & 63)]
                dest[o + 2] = i + 1 < count ? table[Int(v >> 6 & 63)] : UInt8(ascii: "=")
                dest[o + 3] = UInt8(ascii: "=")
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
