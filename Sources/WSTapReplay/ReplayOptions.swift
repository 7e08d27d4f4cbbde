import WSTapFilter
import WSTapRecording
import WSTapRules
import WSTapWire

/// Where a replay goes: `ws(s)://host[:port][/path]` from `--to`.
public struct ReplayTarget: Sendable, Equatable, CustomStringConvertible {
    public var secure: Bool
    public var host: String
    public var port: Int
    /// The request target to use instead of the recorded one; nil keeps the recording's.
    public var path: String?

    public init(secure: Bool, host: String, port: Int, path: String?) {
        self.secure = secure
        self.host = host
        self.port = port
        self.path = path
    }

    /// `host:port`, the port left out when it is the scheme's own; IPv6 in brackets.
    public var hostHeader: String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == (secure ? 443 : 80) ? name : "\(name):\(port)"
    }

    public var description: String { "\(secure ? "wss" : "ws")://\(hostHeader)\(path ?? "")" }
}

public struct ReplayOptions: Sendable {
    public enum Pace: Sendable, Equatable {
        /// Send client message i once the server messages recorded before it have arrived.
        case reply
        /// Send the next client message after the server has been quiet this long.
        case idle(Duration)
        /// The recorded gaps, scaled by `speed` and capped by `maxGap`.
        case timing
        /// Everything at once.
        case asap
    }

    public enum Compression: String, Sendable { case keep, strip }
    public enum Reframe: String, Sendable { case keep, single }

    public struct Capture: Sendable {
        public var name: String
        public var path: JSONPath
        public init(name: String, path: JSONPath) {
            self.name = name
            self.path = path
        }
    }

    public var pace: Pace = .reply
    /// How long one step may wait for the server (pacing `reply`), and for the handshake and close.
    public var stepTimeout: Duration = .seconds(10)
    public var speed: Double = 1
    public var maxGapNanoseconds: Int64?
    /// Replies are matched by this value instead of counted (pacing, and the diff).
    public var correlate: JSONPath?
    public var captures: [Capture] = []
    public var keepKey = false
    public var addHeaders: [(name: String, value: String)] = []
    public var dropHeaders: [String] = []
    public var compression = Compression.keep
    public var reframe = Reframe.keep
    /// Bytes of each payload kept in the new session's records.
    public var payloadCap = 64 * 1024
    /// The new session's connection id in its records.
    public var connectionID: UInt64 = 1
    /// Rules applied to each client message before it is sent ("replay with this message changed").
    /// Payload edits, drop, duplicate, fragment and uncompressed act; the others mean nothing to a
    /// replay and are reported once each.
    public var rules: RuleEngine?

    public init() {}
}

/// How a replay went: what was sent and received, what the handshake said, what timed out.
public struct ReplayResult: Sendable {
    public var recordedConnection: UInt64
    public var target: String
    public var sent = 0
    /// Set when the replay could not run to its end (no connection, upgrade refused).
    public var failure: String?
    /// Differences of the server's 101 from the recorded one.
    public var handshake: [String] = []
    /// The subprotocol differs: counted as a difference by the diff.
    public var handshakeDiffers = false
    public var subprotocol: String?
    public var extensions: String?
    public var timeouts: [String] = []
    public var notes: [String] = []
    /// From connected to the end of the session.
    public var elapsedNanoseconds: Int64?
    /// Per rule name: client messages it changed, and dropped.
    public var changedByRule: [String: Int] = [:]
    public var droppedByRule: [String: Int] = [:]

    public init(recordedConnection: UInt64, target: String) {
        self.recordedConnection = recordedConnection
        self.target = target
    }
}

extension ReplayOptions.Pace {
    /// `reply`, `asap`, `timing` or `idle=DURATION` (`idle=300ms`, `idle=2s`), as `--pace` and the
    /// control API's replays take it; nil for anything else.
    public init?(parsing text: String) {
        switch text {
        case "reply": self = .reply
        case "timing": self = .timing
        case "asap": self = .asap
        default:
            guard text.hasPrefix("idle="), let duration = Self.duration(String(text.dropFirst(5))) else { return nil }
            self = .idle(duration)
        }
    }

    /// `300ms`, `2s`, `1.5s`, or plain seconds.
    public static func duration(_ text: String) -> Duration? {
        let (number, scale): (Substring, Double) = text.hasSuffix("ms") ? (text.dropLast(2), 0.001) : text.hasSuffix("s") ? (text.dropLast(), 1) : (Substring(text), 1)
        guard let value = Double(number), value >= 0, value.isFinite else { return nil }
        return .nanoseconds(Int64(value * scale * 1e9))
    }
}
