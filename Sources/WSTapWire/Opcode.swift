/// A WebSocket frame opcode (RFC 6455 §5.2), including the reserved values a tap must still name.
public struct Opcode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue & 0x0F }

    public static let continuation = Opcode(rawValue: 0x0)
    public static let text = Opcode(rawValue: 0x1)
    public static let binary = Opcode(rawValue: 0x2)
    public static let close = Opcode(rawValue: 0x8)
    public static let ping = Opcode(rawValue: 0x9)
    public static let pong = Opcode(rawValue: 0xA)

    /// Control frames have the high bit of the opcode set (§5.5), reserved ones (0xB–0xF) included.
    public var isControl: Bool { rawValue & 0x8 != 0 }
    /// 0x3–0x7 and 0xB–0xF have no meaning without an extension that defines them (§5.2).
    public var isReserved: Bool { !(rawValue <= 0x2 || (0x8...0xA).contains(rawValue)) }

    public var description: String {
        switch rawValue {
        case 0x0: "cont"
        case 0x1: "text"
        case 0x2: "binary"
        case 0x8: "close"
        case 0x9: "ping"
        case 0xA: "pong"
        default: "op\(rawValue)"
        }
    }
}
