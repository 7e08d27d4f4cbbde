/// An incremental, tolerant frame parser (RFC 6455 §5.2).
///
/// It never buffers payload: it hands out payload ranges of the caller's buffer as they arrive, so a
/// 1 GiB frame costs no memory. It never rejects a frame either: every header parses, and judging it
/// (reserved bits, masks, lengths) is the dissector's job. The result is the same however the input
/// is split, which the tests check at every split point.
public struct FrameParser: Sendable {
    public enum Event: Equatable, Sendable {
        case header(FrameHeader)
        /// Payload bytes `range` of the input; `offsetInPayload` is where they start inside the frame's
        /// payload (needed to unmask them and to know how much is left).
        case payload(range: Range<Int>, offsetInPayload: UInt64)
        /// The frame's payload is complete (also sent right after a header with a zero length).
        case frameEnd
    }

    private var headerBytes: (UInt64, UInt64) = (0, 0)  // up to 14 header bytes, little scratch
    private var headerFill = 0
    private var current: FrameHeader?
    private var payloadDone: UInt64 = 0
    private var pendingEnd = false

    public init() {}

    /// True while a frame header or payload is incomplete.
    public var isInsideFrame: Bool { headerFill > 0 || current != nil }

    /// The header of the frame whose payload is being read, if any.
    public var currentHeader: FrameHeader? { current }

    /// Returns the next event found in `input` starting at `index`, advancing `index` past what it used,
    /// or nil when `input` is exhausted and more bytes are needed.
    public mutating func next(_ input: UnsafeRawBufferPointer, index: inout Int) -> Event? {
        if pendingEnd {
            pendingEnd = false
            current = nil
            return .frameEnd
        }
        if let header = current {
            let remaining = header.payloadLength - payloadDone
            if remaining == 0 {
                current = nil
                return .frameEnd
            }
            let available = input.count - index
            guard available > 0 else { return nil }
            let take = Int(min(UInt64(available), remaining))
            let event = Event.payload(range: index..<(index + take), offsetInPayload: payloadDone)
            index += take
            payloadDone += UInt64(take)
            if payloadDone == header.payloadLength { pendingEnd = true }
            return event
        }
        return parseHeader(input, index: &index)
    }

    private mutating func parseHeader(_ input: UnsafeRawBufferPointer, index: inout Int) -> Event? {
        // Copy header bytes into scratch until the header is complete; headers are at most 14 bytes.
        while index < input.count {
            let needed = Self.headerLength(first: byte(0), second: byte(1), filled: headerFill)
            if headerFill >= needed { break }
            setByte(headerFill, input[index])
            headerFill += 1
            index += 1
        }
        let needed = Self.headerLength(first: byte(0), second: byte(1), filled: headerFill)
        guard headerFill >= needed else { return nil }

        let first = byte(0)
        let second = byte(1)
        let masked = second & 0x80 != 0
        let length7 = second & 0x7F
        var length: UInt64
        var encoding: LengthEncoding
        var cursor = 2
        switch length7 {
        case 126:
            length = UInt64(byte(2)) << 8 | UInt64(byte(3))
            encoding = .sixteenBit
            cursor = 4
        case 127:
            length = 0
            for i in 2..<10 { length = length << 8 | UInt64(byte(i)) }
            encoding = .sixtyFourBit
            cursor = 10
        default:
            length = UInt64(length7)
            encoding = .sevenBit
        }
        var key: UInt32?
        if masked {
            key = UInt32(byte(cursor)) << 24 | UInt32(byte(cursor + 1)) << 16 | UInt32(byte(cursor + 2)) << 8 | UInt32(byte(cursor + 3))
        }
        let header = FrameHeader(
            fin: first & 0x80 != 0, rsv1: first & 0x40 != 0, rsv2: first & 0x20 != 0, rsv3: first & 0x10 != 0,
            opcode: Opcode(rawValue: first & 0x0F), maskKey: key, payloadLength: length, lengthEncoding: encoding)
        headerFill = 0
        headerBytes = (0, 0)
        current = header
        payloadDone = 0
        return .header(header)
    }

    /// Total header length once the first two bytes are known (2 until then).
    private static func headerLength(first: UInt8, second: UInt8, filled: Int) -> Int {
        if filled < 2 { return 2 }
        let extra: Int
        switch second & 0x7F {
        case 126: extra = 2
        case 127: extra = 8
        default: extra = 0
        }
        return 2 + extra + (second & 0x80 != 0 ? 4 : 0)
    }

    private func byte(_ i: Int) -> UInt8 {
        i < 8 ? UInt8(truncatingIfNeeded: headerBytes.0 >> UInt64(i * 8)) : UInt8(truncatingIfNeeded: headerBytes.1 >> UInt64((i - 8) * 8))
    }

    private mutating func setByte(_ i: Int, _ value: UInt8) {
        if i < 8 { headerBytes.0 |= UInt64(value) << UInt64(i * 8) } else { headerBytes.1 |= UInt64(value) << UInt64((i - 8) * 8) }
    }
}
