/// A small append-only JSON writer into a byte buffer. Records are written often (four per small
/// message relayed), so it writes through a raw pointer instead of `Array.append`, whose per-call
/// uniqueness and capacity checks showed up in profiles, and avoids Foundation's encoder entirely.
public struct JSONWriter {
    /// Growable byte storage; a class so the writer can be a cheap value passed `inout`.
    final class Storage {
        var base: UnsafeMutablePointer<UInt8>
        var count = 0
        var capacity: Int

        init(capacity: Int) {
            self.capacity = max(64, capacity)
            base = .allocate(capacity: self.capacity)
        }

        deinit { base.deallocate() }

        @inline(__always) func reserve(_ extra: Int) {
            guard count + extra > capacity else { return }
            let newCapacity = max(capacity * 2, count + extra)
            let newBase = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
            newBase.update(from: base, count: count)
            base.deallocate()
            base = newBase
            capacity = newCapacity
        }
    }

    private let storage: Storage
    private var needsComma = false

    public init(capacity: Int = 512) { storage = Storage(capacity: capacity) }

    /// Forgets what was written, keeping the storage for reuse.
    public mutating func removeAll() {
        storage.count = 0
        needsComma = false
    }

    public var capacity: Int { storage.capacity }

    /// The bytes written so far (a copy; use `withBytes` on hot paths).
    public var bytes: [UInt8] { withBytes { Array($0) } }

    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: storage.base, count: storage.count))
    }

    @inline(__always) private mutating func append(_ byte: UInt8) {
        storage.reserve(1)
        storage.base[storage.count] = byte
        storage.count += 1
    }

    @inline(__always) private mutating func append(_ raw: UnsafeRawBufferPointer) {
        guard raw.count > 0 else { return }
        storage.reserve(raw.count)
        (storage.base + storage.count).update(from: raw.baseAddress!.assumingMemoryBound(to: UInt8.self), count: raw.count)
        storage.count += raw.count
    }

    @inline(__always) private mutating func append(_ buffer: UnsafeBufferPointer<UInt8>) { append(UnsafeRawBufferPointer(buffer)) }

    private mutating func append(_ array: [UInt8]) { array.withUnsafeBytes { append($0) } }

    /// One byte written as is, outside the value/comma bookkeeping.
    mutating func appendRaw(_ byte: UInt8) { append(byte) }

    /// A value that is JSON text already (a record encoded before), as the next value.
    public mutating func raw(_ json: [UInt8]) {
        separator()
        append(json)
        needsComma = true
    }

    public mutating func beginObject() { separator(); append(UInt8(ascii: "{")); needsComma = false }
    public mutating func endObject() { append(UInt8(ascii: "}")); needsComma = true }
    public mutating func beginArray() { separator(); append(UInt8(ascii: "[")); needsComma = false }
    public mutating func endArray() { append(UInt8(ascii: "]")); needsComma = true }
    public mutating func newline() { append(0x0A); needsComma = false }

    /// `,"name":` in one go: records have a dozen keys each, and byte-by-byte appends (each with its
    /// capacity check) were the writer's largest cost.
    public mutating func key(_ name: StaticString) {
        name.withUTF8Buffer { utf8 in
            storage.reserve(utf8.count + 4)
            var at = storage.base + storage.count
            if needsComma { at.pointee = UInt8(ascii: ","); at += 1 }
            at.pointee = UInt8(ascii: "\"")
            if let start = utf8.baseAddress { (at + 1).update(from: start, count: utf8.count) }
            at += 1 + utf8.count
            at[0] = UInt8(ascii: "\"")
            at[1] = UInt8(ascii: ":")
            storage.count = at + 2 - storage.base
        }
        needsComma = false
    }

    /// A key that is not known when wstap is built (a reason, a header name), escaped as a string.
    public mutating func key(dynamic name: String) {
        string(name)
        append(UInt8(ascii: ":"))
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

    /// A string the caller has already checked is valid UTF-8 (escaped, not checked again).
    public mutating func string(validUTF8 value: [UInt8]) {
        separator()
        value.withUnsafeBufferPointer { appendEscaped($0) }
        needsComma = true
    }

    public mutating func base64(_ value: [UInt8]) {
        separator()
        append(UInt8(ascii: "\""))
        storage.reserve((value.count + 2) / 3 * 4)
        let start = storage.count
        value.withUnsafeBytes { raw in
            storage.count += Base64Text.encode(raw, to: UnsafeMutableRawBufferPointer(start: storage.base + start, count: storage.capacity - start))
        }
        append(UInt8(ascii: "\""))
        needsComma = true
    }

    public mutating func integer<I: BinaryInteger>(_ value: I) {
        separator()
        if value < 0 {
            append(UInt8(ascii: "-"))
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
            append(UnsafeRawBufferPointer(rebasing: scratch[(24 - count)...]))
        }
    }

    /// Lower-case hex with a fixed width (mask keys).
    public mutating func appendHex(_ value: UInt32) {
        for shift in stride(from: 28, through: 0, by: -4) {
            let nibble = UInt8(truncatingIfNeeded: value >> UInt32(shift)) & 0xF
            append(nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10)
        }
    }

    public mutating func bool(_ value: Bool) {
        separator()
        if value {
            append(Self.trueBytes)
        } else {
            append(Self.falseBytes)
        }
        needsComma = true
    }

    public mutating func null() {
        separator()
        append(Self.nullBytes)
        needsComma = true
    }

    /// A JSON string holding 8 hex digits.
    public mutating func hexString(_ value: UInt32) {
        separator()
        append(UInt8(ascii: "\""))
        appendHex(value)
        append(UInt8(ascii: "\""))
        needsComma = true
    }

    /// Seconds since the epoch with 6 decimals, as a JSON number.
    public mutating func timestamp(nanoseconds: Int64) { fixedPoint(nanoseconds, unit: 1_000_000_000, decimals: 6) }

    /// Milliseconds with 3 decimals (microsecond resolution), as a JSON number.
    public mutating func number(milliseconds nanoseconds: Int64) { fixedPoint(nanoseconds, unit: 1_000_000, decimals: 3) }

    /// `nanoseconds / unit` with `decimals` digits after the point, clamped at 0.
    private mutating func fixedPoint(_ nanoseconds: Int64, unit: UInt64, decimals: Int) {
        separator()
        let clamped = UInt64(max(0, nanoseconds))
        var scale: UInt64 = 1
        for _ in 0..<decimals { scale *= 10 }
        appendDigits(clamped / unit)
        append(UInt8(ascii: "."))
        appendDigits(clamped % unit / (unit / scale), minimumWidth: decimals)
        needsComma = true
    }

    private static let trueBytes: [UInt8] = Array("true".utf8)
    private static let falseBytes: [UInt8] = Array("false".utf8)
    private static let nullBytes: [UInt8] = Array("null".utf8)

    public mutating func stringOrNull(_ value: String?) { if let value { string(value) } else { null() } }

    private mutating func separator() { if needsComma { append(UInt8(ascii: ",")) } }

    private mutating func appendEscaped(_ utf8: UnsafeBufferPointer<UInt8>) {
        append(UInt8(ascii: "\""))
        storage.reserve(utf8.count + 2)
        // Copy runs that need no escaping in one go; most text has none.
        var runStart = 0
        for (i, byte) in utf8.enumerated() where byte < 0x20 || byte == 0x22 || byte == 0x5C || byte == 0x7F {
            if runStart < i { append(UnsafeBufferPointer(rebasing: utf8[runStart..<i])) }
            runStart = i + 1
            switch byte {
            case UInt8(ascii: "\""): append(0x5C); append(0x22)
            case UInt8(ascii: "\\"): append(0x5C); append(0x5C)
            case 0x0A: append(0x5C); append(UInt8(ascii: "n"))
            case 0x0D: append(0x5C); append(UInt8(ascii: "r"))
            case 0x09: append(0x5C); append(UInt8(ascii: "t"))
            default:  // other control characters and DEL: \u00XX
                append(0x5C); append(UInt8(ascii: "u")); append(UInt8(ascii: "0")); append(UInt8(ascii: "0"))
                let nibbles = (byte >> 4, byte & 0xF)
                append(nibbles.0 < 10 ? 0x30 + nibbles.0 : 0x57 + nibbles.0)
                append(nibbles.1 < 10 ? 0x30 + nibbles.1 : 0x57 + nibbles.1)
            }
        }
        if runStart < utf8.count { append(UnsafeBufferPointer(rebasing: utf8[runStart...])) }
        append(UInt8(ascii: "\""))
    }
}

import WSTapWire
typealias Base64Text = Base64

/// A writer is used by one thread at a time; `JSONLinesSink` hands a spare one from thread to thread
/// through a mutex, never sharing it while in use.
extension JSONWriter: @unchecked Sendable {}
