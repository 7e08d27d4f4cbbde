/// What the relay does with TLS. The relay decides; the shell terminates and originates TLS.
public struct TLSSettings: Sendable {
    /// Forward mode: terminate TLS inside CONNECT tunnels with certificates from wstap's CA.
    public var interceptConnect: Bool
    /// Hosts tunnelled untouched, as `*` glob patterns matched case-insensitively against the SNI and
    /// the CONNECT host.
    public var passthrough: [String]
    /// Reverse mode with --listen-tls: the client speaks TLS to wstap from its first byte.
    public var clientTLS: Bool
    /// False with --insecure: upstream certificates are not verified (records say so).
    public var verifyUpstream: Bool

    public init(interceptConnect: Bool = false, passthrough: [String] = [], clientTLS: Bool = false, verifyUpstream: Bool = true) {
        self.interceptConnect = interceptConnect
        self.passthrough = passthrough
        self.clientTLS = clientTLS
        self.verifyUpstream = verifyUpstream
    }

    public func isPassthrough(_ host: String) -> Bool {
        passthrough.contains { Self.glob($0.lowercased(), matches: host.lowercased()) }
    }

    /// `*` matches any run of characters (including dots, as users expect for "*.example.com").
    static func glob(_ pattern: String, matches text: String) -> Bool {
        let p = Array(pattern), t = Array(text)
        var pi = 0, ti = 0, star = -1, mark = 0
        while ti < t.count {
            if pi < p.count && (p[pi] == t[ti] || p[pi] == "?") {
                pi += 1; ti += 1
            } else if pi < p.count && p[pi] == "*" {
                star = pi; mark = ti; pi += 1
            } else if star >= 0 {
                pi = star + 1; mark += 1; ti = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == "*" { pi += 1 }
        return pi == p.count
    }
}

/// How to reach an upstream over TLS.
public struct UpstreamTLS: Sendable, Equatable {
    /// The SNI to send and the name to verify; nil for IP literals (SNI cannot carry an IP).
    public var serverName: String?

    public init(serverName: String?) { self.serverName = serverName }

    /// SNI for `host`, leaving IP literals out.
    public static func forHost(_ host: String, sni: String? = nil) -> UpstreamTLS {
        if let sni, !sni.isEmpty { return UpstreamTLS(serverName: sni) }
        return UpstreamTLS(serverName: isIPLiteral(host) ? nil : host)
    }

    static func isIPLiteral(_ host: String) -> Bool {
        if host.contains(":") { return true }  // IPv6
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
    }
}
