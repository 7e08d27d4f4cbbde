/// A `ws://host[:port][/path]` upstream given on the command line.
public struct UpstreamURL: Equatable, Sendable, CustomStringConvertible {
    public var scheme: String
    public var host: String
    public var port: Int
    /// The path and query to use instead of the client's, or nil to keep the client's.
    public var path: String?

    public init(scheme: String = "ws", host: String, port: Int, path: String? = nil) {
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path
    }

    public enum ParseError: Error, CustomStringConvertible, Equatable {
        case invalid(String)
        public var description: String { if case .invalid(let text) = self { text } else { "" } }
    }

    /// Parses `ws://`, `wss://`, `http://` or `https://` URLs; IPv6 hosts go in brackets.
    public static func parse(_ text: String) throws -> UpstreamURL {
        guard let schemeEnd = text.firstIndex(of: ":"), text[schemeEnd...].hasPrefix("://") else {
            throw ParseError.invalid("'\(text)' is not a URL; expected ws://host[:port][/path]")
        }
        let scheme = text[..<schemeEnd].lowercased()
        let defaultPort: Int
        switch scheme {
        case "ws", "http": defaultPort = 80
        case "wss", "https": defaultPort = 443
        default: throw ParseError.invalid("scheme '\(scheme)' in '\(text)' is not ws, wss, http or https")
        }
        var rest = text[text.index(schemeEnd, offsetBy: 3)...]
        var path: String?
        if let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) {
            path = String(rest[slash...])
            if path?.first == "?" { path = "/" + path! }
            rest = rest[..<slash]
        }
        if path == "/" { path = nil }  // "ws://h:1/" means "no path given": keep the client's
        if let path, let bad = path.unicodeScalars.first(where: { $0.value <= 0x20 || $0.value == 0x7F }) {
            // It becomes a request target: spaces and control characters would break the request line.
            throw ParseError.invalid("the path in '\(text)' contains \(bad == " " ? "a space" : "a control character"); percent-encode it (%20)")
        }
        let (host, port) = try parseAuthority(String(rest), defaultPort: defaultPort, context: text)
        return UpstreamURL(scheme: scheme == "http" ? "ws" : scheme == "https" ? "wss" : scheme, host: host, port: port, path: path)
    }

    /// Parses `host:port`, `[v6]:port` or `host` (with a default port).
    /// `allowPortZero` is for listen addresses, where 0 asks the system for a free port.
    public static func parseAuthority(_ authority: String, defaultPort: Int?, context: String? = nil, allowPortZero: Bool = false) throws -> (String, Int) {
        let where_ = context.map { " in '\($0)'" } ?? ""
        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw ParseError.invalid("unclosed '[' in host\(where_)") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { throw ParseError.invalid("unexpected '\(after)' after host\(where_)") }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = Substring(authority)
        }
        if authority.contains("@") { throw ParseError.invalid("user info is not supported\(where_)") }
        guard !host.isEmpty else { throw ParseError.invalid("no host\(where_)") }
        let port: Int
        if let portText {
            guard let p = Int(portText), ((allowPortZero ? 0 : 1)...65535).contains(p) else { throw ParseError.invalid("port '\(portText)' is not a number from 1 to 65535\(where_)") }
            port = p
        } else if let defaultPort {
            port = defaultPort
        } else {
            throw ParseError.invalid("no port\(where_)")
        }
        return (String(host), port)
    }

    /// `host:port` as it goes in a Host header (IPv6 in brackets, default port omitted).
    public var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        let defaultPort = scheme == "wss" ? 443 : 80
        return port == defaultPort ? h : "\(h):\(port)"
    }

    public var description: String { "\(scheme)://\(hostHeader)\(path ?? "")" }
}
