/// Close status codes (RFC 6455 §7.4) and whether a code may appear on the wire.
public enum CloseCode {
    /// §7.4.1/§7.4.2: 1005, 1006 and 1015 are reserved for APIs and MUST NOT be sent; 0–999 are unused;
    /// 1016–2999 are reserved for future RFCs (1012–1014 were later registered by IANA, so they pass).
    public static func isAllowedOnWire(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014: true
        case 3000...4999: true
        default: false
        }
    }

    public static func name(_ code: UInt16) -> String? {
        switch code {
        case 1000: "normal closure"
        case 1001: "going away"
        case 1002: "protocol error"
        case 1003: "unsupported data"
        case 1005: "no status received"
        case 1006: "abnormal closure"
        case 1007: "invalid frame payload data"
        case 1008: "policy violation"
        case 1009: "message too big"
        case 1010: "mandatory extension"
        case 1011: "internal error"
        case 1012: "service restart"
        case 1013: "try again later"
        case 1014: "bad gateway"
        case 1015: "TLS handshake"
        default: nil
        }
    }
}
