/// A small append-only JSON writer into a byte buffer. Records are written often (twice per small
/// message), so this avoids Foundation's encoder and its allocations.
public struct JSONWriter {
    public private(set) var bytes: [UInt8] = []
    private var needsComma = false

    public init(capacity: Int = 512) { bytes.reserveCapacity(capacity) }

    public mutating func beginObject() { separator(); bytes.append(UInt8(ascii: "{")); needsComma = false }
    public mutating func endObject() { bytes.append(UInt8(ascii: "}")); needsComma = true }
    public mutating func beginArray() { separator(); bytes.append(UInt8(ascii: "[")); needsComma = false }
    public mutating func endArray() { bytes.append(UInt8(ascii: "]")); needsComma = true }
    public mutating func newline() { bytes.append(0x0A); needsComma = false }

    public mutating func key(_ name: StaticString) {
        separator()
        bytes.append(UInt8(ascii: "\""))
        name.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
        needsComma = false
    }

    public mutating func string(_ value: String) {
        separator()
        var copy = value
        copy.withUTF8 { appendEscaped($0) }
        needsComma = true
    }

    /// Writes bytes as a JSON string. Valid UTF-8 is escaped as is; otherwise it is decoded first, so
    /// invalid sequences become U+FFFD and the line stays valid JSON.
    public mutating func string(utf8 value: [UInt8]) {
        if UTF8Validator.isValid(value) {
            separator()
            value.withUnsafeBufferPointer { appendEscaped($0) }
            needsComma = true
        } else {
            string(String(decoding: value, as: UTF8.self))
        }
    }

    public mutating func base64(_ value: [UInt8]) {
        separator()
        bytes.append(UInt8(ascii: "\""))
        value.withUnsafeBytes { Base64Text.encode($0, into: &bytes) }
        bytes.append(UInt8(ascii: "\""))
        needsComma = true
    }

    public mutating func integer<I: BinaryInteger>(_ value: I) {
        separator()
        if value < 0 {
            bytes.append(UInt8(ascii: "-"))
            appendDigits(UInt64(-Int64(value)))
        } else {
            appendDigits(UInt64(value))
        }
        needsComma = true
    }

    /// Decimal digits without going through String (records are written per message).
    public mutating func appendDigits(_ value: UInt64, minimumWidth: Int = 1) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes of scratch, enough for 20 digits
        var count = 0
        var v = value
        withUnsafeMutableBytes(of: &digits) { scratch in
            repeat {
                scratch[23 - count] = UInt8(ascii: "0") + UInt8(v % 10)
                v /= 10
                count += 1
            } while v > 0 || count < minimumWidth
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch[(24 - count)...]))
        }
    }

    /// Lower-case hex with a fixed width (mask keys).
    public mutating func appendHex(_ value: UInt32) {
        for shift in stride(from: 28, through: 0, by: -4) {
            let nibble = UInt8(truncatingIfNeeded: value >> UInt32(shift)) & 0xF
            bytes.append(nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10)
        }
    }

    public mutating func bool(_ value: Bool) {
        separator()
        if value {
            bytes.append(contentsOf: Self.trueBytes)
        } else {
            bytes.append(contentsOf: Self.falseBytes)
        }
        needsComma = true
    }

    public mutating func null() {
        separator()
        bytes.append(contentsOf: Self.nullBytes)
        needsComma = true
    }

    /// A JSON string holding 8 hex digits.
    public mutating func hexString(_ value: UInt32) {
        separator()
        bytes.append(UInt8(ascii: "\""))
        appendHex(value)
        bytes.append(UInt8(ascii: "\""))
        needsComma = true
    }

    /// Seconds since the epoch with 6 decimals, as a JSON number.
    public mutating func timestamp(nanoseconds: Int64) {
        separator()
        let clamped = UInt64(max(0, nanoseconds))
        appendDigits(clamped / 1_000_000_000)
        bytes.append(UInt8(ascii: "."))
        appendDigits(clamped % 1_000_000_000 / 1000, minimumWidth: 6)
        needsComma = true
    }

    private static let trueBytes: [UInt8] = Array("true".utf8)
    private static let falseBytes: [UInt8] = Array("false".utf8)
    private static let nullBytes: [UInt8] = Array("null".utf8)

    public mutating func stringOrNull(_ value: String?) { if let value { string(value) } else { null() } }

    private mutating func separator() { if needsComma { bytes.append(UInt8(ascii: ",")) } }

    private mutating func appendEscaped(_ utf8: UnsafeBufferPointer<UInt8>) {
        bytes.append(UInt8(ascii: "\""))
        bytes.reserveCapacity(bytes.count + utf8.count + 1)
        // Copy runs that need no escaping in one go; most text has none.
        var runStart = 0
        for (i, byte) in utf8.enumerated() where byte < 0x20 || byte == 0x22 || byte == 0x5C || byte == 0x7F {
            if runStart < i { bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<i])) }
            runStart = i + 1
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [0x5C, 0x22])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [0x5C, 0x5C])
            case 0x0A: bytes.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: bytes.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: bytes.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0x00..<0x20, 0x7F:
                let hexDigits = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: [0x5C, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hexDigits[Int(byte >> 4)], hexDigits[Int(byte & 0xF)]])
            default: bytes.append(byte)
            }
        }
        if runStart < utf8.count { bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart...])) }
        bytes.append(UInt8(ascii: "\""))
    }
}

import WSTapWire
typealias Base64Text = Base64
