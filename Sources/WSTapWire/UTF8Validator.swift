/// Incremental UTF-8 validation (RFC 3629), for text messages split across frames and TCP segments
/// (RFC 6455 §8.1). Rejects overlong forms, surrogates and code points above U+10FFFF, as §5.6 asks.
public struct UTF8Validator: Sendable {
    private var needed = 0          // continuation bytes still expected
    private var lower: UInt8 = 0x80 // allowed range for the next continuation byte
    private var upper: UInt8 = 0xBF
    public private(set) var isValid = true

    public init() {}

    /// True when the bytes so far end on a character boundary.
    public var isComplete: Bool { needed == 0 }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        guard isValid else { return }
        var i = 0
        let count = bytes.count
        while i < count {
            let b = bytes[i]
            if needed == 0 {
                // ASCII fast path: 8 bytes at a time when nothing is pending.
                if i + 8 <= count, bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 {
                    i += 8
                    continue
                }
                switch b {
                case 0x00...0x7F: break
                case 0xC2...0xDF: needed = 1
                case 0xE0: needed = 2; lower = 0xA0
                case 0xE1...0xEC, 0xEE, 0xEF: needed = 2
                case 0xED: needed = 2; upper = 0x9F
                case 0xF0: needed = 3; lower = 0x90
                case 0xF1...0xF3: needed = 3
                case 0xF4: needed = 3; upper = 0x8F
                default: isValid = false; return
                }
            } else {
                guard b >= lower && b <= upper else { isValid = false; return }
                lower = 0x80
                upper = 0xBF
                needed -= 1
            }
            i += 1
        }
    }

    public mutating func feed(_ bytes: [UInt8]) { bytes.withUnsafeBytes { feed($0) } }

    public static func isValid(_ bytes: [UInt8]) -> Bool {
        var validator = UTF8Validator()
        validator.feed(bytes)
        return validator.isValid && validator.isComplete
    }
}
