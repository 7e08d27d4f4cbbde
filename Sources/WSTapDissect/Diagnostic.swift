import WSTapWire

public enum Severity: String, Sendable {
    case error, warning, info
}

/// Every protocol problem the dissector can report. The raw values are the stable codes written to
/// records; docs/diagnostics.md lists them with the rule each one enforces.
public enum DiagnosticCode: String, CaseIterable, Sendable {
    // RFC 6455 §5.2 framing
    case rsvWithoutExtension = "rsv-without-extension"
    case reservedOpcode = "reserved-opcode"
    case unmaskedClientFrame = "unmasked-client-frame"
    case maskedServerFrame = "masked-server-frame"
    case nonMinimalLength = "non-minimal-length"
    case lengthMSBSet = "length-msb-set"
    // §5.4, §5.5 fragmentation and control frames
    case fragmentedControlFrame = "fragmented-control-frame"
    case controlFrameTooLong = "control-frame-too-long"
    case continuationWithoutMessage = "continuation-without-message"
    case dataFrameInsideFragmentedMessage = "data-frame-inside-fragmented-message"
    // §5.6, §8.1 text, §5.5.1 and §7.4 close
    case invalidUTF8Text = "invalid-utf8-text"
    case invalidUTF8CloseReason = "invalid-utf8-close-reason"
    case closeBodyOneByte = "close-body-one-byte"
    case closeCodeNotAllowed = "close-code-not-allowed"
    case frameAfterClose = "frame-after-close"
    // RFC 7692 permessage-deflate
    case rsv1OnControlFrame = "rsv1-on-control-frame"
    case rsv1OnContinuation = "rsv1-on-continuation"
    case inflateFailed = "inflate-failed"
    case inflateLimitExceeded = "inflate-limit-exceeded"
    case badExtensionParameter = "bad-extension-parameter"
    case unsupportedExtension = "unsupported-extension"
    // §4 opening handshake
    case badAccept = "bad-accept"
    case extensionNotOffered = "extension-not-offered"
    case subprotocolNotOffered = "subprotocol-not-offered"
    case upgradeRefused = "upgrade-refused"
    case malformedHTTP = "malformed-http"
    case missingUpgradeHeader = "missing-upgrade-header"
    case missingConnectionUpgrade = "missing-connection-upgrade"
    case badHTTPVersion = "bad-http-version"
    case badWebSocketVersion = "bad-websocket-version"
    case upgradeMethodNotGET = "upgrade-method-not-get"
    case bareLineFeed = "bare-line-feed"
    case pipelinedBytesDropped = "pipelined-bytes-dropped"
    // captures
    case resynchronised = "resynchronised"
    // changes wstap made on purpose (rules, docs/rules.md)
    case reencoding = "reencoding"
    case held = "held"
    case holdReleased = "hold-released"
    case heldNotSent = "held-not-sent"
    case changesStopped = "changes-stopped"
    case tooLargeToChange = "too-large-to-change"
    // end of stream
    case truncatedFrame = "truncated-frame"
    case truncatedMessage = "truncated-message"

    public var severity: Severity {
        switch self {
        case .upgradeRefused, .unsupportedExtension, .resynchronised, .reencoding, .held, .holdReleased: .info
        case .changesStopped, .tooLargeToChange, .heldNotSent: .warning
        case .nonMinimalLength, .frameAfterClose, .inflateLimitExceeded, .truncatedFrame, .truncatedMessage,
            .pipelinedBytesDropped, .bareLineFeed:
            .warning
        default: .error
        }
    }

    /// One line naming the rule, for docs and `--help`-style listings.
    public var summary: String {
        switch self {
        case .rsvWithoutExtension: "RSV bit set but no negotiated extension defines it (RFC 6455 §5.2)"
        case .reservedOpcode: "reserved opcode 0x3–0x7 or 0xB–0xF (§5.2)"
        case .unmaskedClientFrame: "client-to-server frame not masked (§5.1)"
        case .maskedServerFrame: "server-to-client frame masked (§5.1)"
        case .nonMinimalLength: "payload length not in its minimal encoding (§5.2)"
        case .lengthMSBSet: "64-bit payload length with the most significant bit set (§5.2)"
        case .fragmentedControlFrame: "control frame without FIN (§5.5)"
        case .controlFrameTooLong: "control frame payload over 125 bytes (§5.5)"
        case .continuationWithoutMessage: "continuation frame with no fragmented message open (§5.4)"
        case .dataFrameInsideFragmentedMessage: "new text/binary frame while a fragmented message is open (§5.4)"
        case .invalidUTF8Text: "text message is not valid UTF-8 (§5.6, §8.1)"
        case .invalidUTF8CloseReason: "close reason is not valid UTF-8 (§5.5.1)"
        case .closeBodyOneByte: "close frame body of 1 byte (§5.5.1)"
        case .closeCodeNotAllowed: "close code that must not be sent (§7.4.1, §7.4.2)"
        case .frameAfterClose: "frame sent after this side's close frame (§5.5.1)"
        case .rsv1OnControlFrame: "RSV1 on a control frame (RFC 7692 §6.1)"
        case .rsv1OnContinuation: "RSV1 on a continuation frame (RFC 7692 §6.1)"
        case .inflateFailed: "compressed message does not inflate (RFC 7692 §7.2.2)"
        case .inflateLimitExceeded: "inflated message larger than --max-inflate; rest not inflated"
        case .badExtensionParameter: "permessage-deflate parameter invalid in the response (RFC 7692 §7.1)"
        case .unsupportedExtension: "negotiated extension wstap cannot decode; RSV bits are not judged"
        case .badAccept: "Sec-WebSocket-Accept missing or not derived from the key (§4.2.2)"
        case .extensionNotOffered: "response accepts an extension the client never offered (§9.1)"
        case .subprotocolNotOffered: "response selects a subprotocol the client never offered (§4.2.2)"
        case .upgradeRefused: "server answered the upgrade with a status other than 101"
        case .malformedHTTP: "HTTP head or body framing could not be parsed, or the bytes are not HTTP at all; rest of direction not dissected"
        case .missingUpgradeHeader: "101 response without Upgrade: websocket (§4.1: the client must fail the connection)"
        case .missingConnectionUpgrade: "upgrade request or 101 response without the Connection: Upgrade token (§4.1)"
        case .badHTTPVersion: "upgrade request or 101 response in an HTTP version other than HTTP/1.1 (§4.1)"
        case .badWebSocketVersion: "upgrade request without Sec-WebSocket-Version: 13 (§4.1)"
        case .upgradeMethodNotGET: "upgrade requested with a method other than GET (§4.1)"
        case .bareLineFeed: "HTTP head line ending in LF without CR (RFC 9112 §2.2: senders must use CRLF)"
        case .pipelinedBytesDropped: "too many bytes sent before the upgrade answer; they were relayed but not dissected"
        case .resynchronised: "after a capture gap, bytes were skipped up to the next plausible frame header"
        case .reencoding: "a rule changed a compressed message: wstap compresses this direction's messages itself from here on (--compression)"
        case .held: "a hold rule keeps a message: release it (forward, drop or edit) with the control API, or it goes on at --hold-timeout"
        case .holdReleased: "a held message went on without being released: at --hold-timeout, past --hold-limit, or because its sender closed"
        case .heldNotSent: "the connection ended while messages were held: they never reached their peer"
        case .changesStopped: "frames wstap cannot follow (a protocol violation): rules no longer apply to this direction, its bytes pass as they are"
        case .tooLargeToChange: "message larger than --hold-limit: passed on as it came, rules not applied"
        case .truncatedFrame: "connection ended inside a frame"
        case .truncatedMessage: "connection ended inside a fragmented message"
        }
    }
}

public struct Diagnostic: Equatable, Sendable {
    public var code: DiagnosticCode
    public var direction: Direction?
    /// Byte offset in that direction's stream where the problem starts (the frame header for frames).
    public var offset: UInt64
    public var detail: String

    public var severity: Severity { code.severity }

    public init(code: DiagnosticCode, direction: Direction?, offset: UInt64, detail: String) {
        self.code = code
        self.direction = direction
        self.offset = offset
        self.detail = detail
    }
}
