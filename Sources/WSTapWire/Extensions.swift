/// One extension of a `Sec-WebSocket-Extensions` header with its parameters (RFC 6455 §9.1).
public struct ExtensionOffer: Equatable, Sendable {
    public var name: String
    /// Parameters in order; a parameter without `=` has a nil value. Quoted values are unquoted.
    public var parameters: [(name: String, value: String?)]

    public init(name: String, parameters: [(name: String, value: String?)] = []) {
        self.name = name
        self.parameters = parameters
    }

    public static func == (lhs: ExtensionOffer, rhs: ExtensionOffer) -> Bool {
        lhs.name == rhs.name && lhs.parameters.map { "\($0.name)=\($0.value ?? "")" } == rhs.parameters.map { "\($0.name)=\($0.value ?? "")" }
    }

    /// Parses every value of the header (one or many header lines) into extensions, keeping each
    /// parameter attached to its own extension: never search the raw header for substrings.
    public static func parse(_ headerValues: [String]) -> [ExtensionOffer] {
        var result: [ExtensionOffer] = []
        for value in headerValues {
            for element in splitOutsideQuotes(value, on: ",") {
                let pieces = splitOutsideQuotes(element, on: ";").map { $0.trimmingWhitespace() }
                guard let name = pieces.first, !name.isEmpty else { continue }
                var parameters: [(name: String, value: String?)] = []
                for piece in pieces.dropFirst() where !piece.isEmpty {
                    if let eq = piece.firstIndex(of: "=") {
                        var v = piece[piece.index(after: eq)...].trimmingWhitespace()
                        if v.count >= 2, v.hasPrefix("\""), v.hasSuffix("\"") { v = String(v.dropFirst().dropLast()) }
                        parameters.append((piece[..<eq].trimmingWhitespace().lowercased(), v))
                    } else {
                        parameters.append((piece.lowercased(), nil))
                    }
                }
                result.append(ExtensionOffer(name: name.lowercased(), parameters: parameters))
            }
        }
        return result
    }

    private static func splitOutsideQuotes(_ text: String, on separator: Character) -> [String] {
        var parts: [String] = []
        var current = ""
        var quoted = false
        for c in text {
            if c == "\"" { quoted.toggle() }
            if c == separator && !quoted {
                parts.append(current)
                current = ""
            } else {
                current.append(c)
            }
        }
        parts.append(current)
        return parts
    }
}

/// The permessage-deflate parameters a server accepted (RFC 7692 §7.1), already mapped to directions:
/// `client_*` parameters govern what the client compresses (client→server), `server_*` the reverse.
public struct PerMessageDeflate: Equatable, Sendable {
    public var clientNoContextTakeover = false
    public var serverNoContextTakeover = false
    public var clientMaxWindowBits: Int?
    public var serverMaxWindowBits: Int?

    public init() {}

    /// Reads the accepted extension's parameters; returns the problems it found (unknown, duplicate or
    /// out-of-range parameters, §7.1) as text so the caller can turn them into diagnostics.
    public static func fromResponse(_ offer: ExtensionOffer) -> (PerMessageDeflate, problems: [String]) {
        var config = PerMessageDeflate()
        var problems: [String] = []
        var seen = Set<String>()
        for (name, value) in offer.parameters {
            if !seen.insert(name).inserted { problems.append("duplicate parameter \(name)") }
            switch name {
            case "client_no_context_takeover", "server_no_context_takeover":
                if value != nil { problems.append("\(name) takes no value") }
                if name.hasPrefix("client") { config.clientNoContextTakeover = true } else { config.serverNoContextTakeover = true }
            case "client_max_window_bits", "server_max_window_bits":
                // In a response both carry a value 8...15 (§7.1.2.1, §7.1.2.2).
                guard let text = value, let bits = Int(text), (8...15).contains(bits), text.first != "0" else {
                    problems.append("\(name) needs a value from 8 to 15, got \(value ?? "none")")
                    continue
                }
                if name.hasPrefix("client") { config.clientMaxWindowBits = bits } else { config.serverMaxWindowBits = bits }
            default:
                problems.append("unknown parameter \(name)")
            }
        }
        return (config, problems)
    }

    /// Whether messages sent from this side reset the compression context after each message.
    public func resetsContext(fromClient: Bool) -> Bool { fromClient ? clientNoContextTakeover : serverNoContextTakeover }

    /// The header value as it would be negotiated, for records.
    public var description: String {
        var parts = ["permessage-deflate"]
        if serverNoContextTakeover { parts.append("server_no_context_takeover") }
        if clientNoContextTakeover { parts.append("client_no_context_takeover") }
        if let bits = serverMaxWindowBits { parts.append("server_max_window_bits=\(bits)") }
        if let bits = clientMaxWindowBits { parts.append("client_max_window_bits=\(bits)") }
        return parts.joined(separator: "; ")
    }
}
