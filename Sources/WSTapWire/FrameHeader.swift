/// How a frame's payload length was written on the wire (RFC 6455 §5.2). Kept so records show the
/// exact encoding and so non-minimal encodings can be reported.
public enum LengthEncoding: UInt8, Sendable {
    case sevenBit = 7
    case sixteenBit = 16
    case sixtyFourBit = 64
}

/// A parsed frame header, exactly as it was on the wire.
public struct FrameHeader: Equatable, Sendable {
    public var fin: Bool
    public var rsv1: Bool
    public var rsv2: Bool
    public var rsv3: Bool
    public var opcode: Opcode
    /// The masking key as a big-endian integer (first wire byte in the high bits), nil when unmasked.
    public var maskKey: UInt32?
    public var payloadLength: UInt64
    public var lengthEncoding: LengthEncoding
    /// Bytes of header: 2, plus 2 or 8 for the extended length, plus 4 for the mask.
    public var headerLength: Int

    public var masked: Bool { maskKey != nil }

    /// §5.2: "the minimal number of bytes MUST be used to encode the length".
    public var hasNonMinimalLength: Bool {
        switch lengthEncoding {
        case .sevenBit: false
        case .sixteenBit: payloadLength < 126
        case .sixtyFourBit: payloadLength <= 0xFFFF
        }
    }

    /// §5.2: "the most significant bit MUST be 0" for a 64-bit length.
    public var hasLengthMSBSet: Bool { lengthEncoding == .sixtyFourBit && payloadLength >> 63 == 1 }

    public init(
        fin: Bool, rsv1: Bool = false, rsv2: Bool = false, rsv3: Bool = false, opcode: Opcode,
        maskKey: UInt32?, payloadLength: UInt64, lengthEncoding: LengthEncoding? = nil
    ) {
        self.fin = fin
        self.rsv1 = rsv1
        self.rsv2 = rsv2
        self.rsv3 = rsv3
        self.opcode = opcode
        self.maskKey = maskKey
        self.payloadLength = payloadLength
        let encoding = lengthEncoding ?? (payloadLength < 126 ? .sevenBit : payloadLength <= 0xFFFF ? .sixteenBit : .sixtyFourBit)
        self.lengthEncoding = encoding
        self.headerLength = 2 + (encoding == .sevenBit ? 0 : encoding == .sixteenBit ? 2 : 8) + (maskKey == nil ? 0 : 4)
    }

    /// The header's wire bytes, keeping the recorded length encoding (so non-minimal headers round-trip).
    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(headerLength)
        encode(into: &bytes)
        return bytes
    }

    /// Appends the header's wire bytes to `bytes` (no array of its own: frames are built per edited message).
    public func encode(into bytes: inout [UInt8]) {
        var first = opcode.rawValue
        if fin { first |= 0x80 }
        if rsv1 { first |= 0x40 }
        if rsv2 { first |= 0x20 }
        if rsv3 { first |= 0x10 }
        bytes.append(first)
        let maskBit: UInt8 = maskKey == nil ? 0 : 0x80
        switch lengthEncoding {
        case .sevenBit:
            bytes.append(maskBit | UInt8(payloadLength))
        case .sixteenBit:
            bytes.append(maskBit | 126)
            bytes.append(UInt8(truncatingIfNeeded: payloadLength >> 8))
            bytes.append(UInt8(truncatingIfNeeded: payloadLength))
        case .sixtyFourBit:
            bytes.append(maskBit | 127)
            for shift in stride(from: 56, through: 0, by: -8) {
                bytes.append(UInt8(truncatingIfNeeded: payloadLength >> UInt64(shift)))
            }
        }
        if let key = maskKey {
            for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: key >> UInt32(shift))) }
        }
    }
}
