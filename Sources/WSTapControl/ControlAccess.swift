#if canImport(Glibc)
import Glibc
#endif

/// Who may use the control server: checked before any route, for every request.
///
/// - `Host` must name the server as the browser reached it (the listen address, `localhost`,
///   `127.0.0.1` or `[::1]` with the port). A DNS-rebinding page reaches a loopback port under its
///   own name, so its requests carry that name and are refused.
/// - `Origin`, when a browser sends one, must be the server's own origin: a page elsewhere cannot
///   use the API from a visitor's browser, token cookie or not.
/// - The token: `Authorization: Bearer TOKEN` (scripts, `wstap ctl`) or the `wstap_token` cookie the
///   page got. The URL printed at start carries `?token=` once; the page answers it with the cookie
///   (SameSite=Strict, HttpOnly) and a redirect to the same path without it, so the token does not
///   stay in the address bar or the history.
public struct ControlAccess: Sendable {
    public let token: String
    private let hosts: Set<String>
    /// Listening on every address: any IP literal is a name the server can be reached by.
    private let anyAddress: Bool

    public static let cookieName = "wstap_token"

    public init(token: String, listenHost: String, port: Int) {
        self.token = token
        var hosts: Set<String> = ["localhost:\(port)", "127.0.0.1:\(port)", "[::1]:\(port)"]
        let host = listenHost.lowercased()
        hosts.insert(host.contains(":") && !host.hasPrefix("[") ? "[\(host)]:\(port)" : "\(host):\(port)")
        self.hosts = hosts
        anyAddress = host == "0.0.0.0" || host == "::" || host == "[::]"
    }

    /// 128 random bits as 32 hex digits, from the kernel's generator.
    public static func randomToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<2).map { _ in
            let hex = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
    }

    public enum Verdict: Equatable, Sendable {
        case allowed
        /// The token came in the query: answer with the cookie and a redirect to `location`.
        case setCookieAndRedirect(location: String)
        case refused(status: Int, reason: String)
    }

    /// - Parameters:
    ///   - target: the request target as sent (path and query).
    ///   - header: the request's header value by lowercased name (the last one when repeated).
    public func check(target: String, header: (String) -> String?) -> Verdict {
        guard let host = header("host")?.lowercased(), isOwnHost(host) else {
            return .refused(status: 403, reason: "the Host header does not name this server (DNS rebinding is refused); open the URL wstap printed")
        }
        if let origin = header("origin") {
            guard origin.lowercased() == "http://\(host)" else {
                return .refused(status: 403, reason: "requests from another origin are refused")
            }
        }
        if let authorization = header("authorization") {
            let scheme = "bearer "
            guard authorization.lowercased().hasPrefix(scheme), sameText(String(authorization.dropFirst(scheme.count)), token) else {
                return .refused(status: 401, reason: "wrong token: use the one wstap printed at start (Authorization: Bearer TOKEN)")
            }
            return .allowed
        }
        if let cookies = header("cookie"), let given = Self.cookie(Self.cookieName, in: cookies), sameText(given, token) {
            return .allowed
        }
        let (path, query) = ControlRequest.split(target)
        if let given = query["token"] {
            guard sameText(given, token) else { return .refused(status: 401, reason: "wrong token in the URL: open the URL wstap printed") }
            var rest = query
            rest["token"] = nil
            return .setCookieAndRedirect(location: path + ControlRequest.queryString(rest))
        }
        return .refused(status: 401, reason: "a token is needed: open the URL wstap printed, or send Authorization: Bearer TOKEN")
    }

    /// The `Set-Cookie` value that keeps the token for the page.
    public var cookie: String { "\(Self.cookieName)=\(token); Path=/; HttpOnly; SameSite=Strict" }

    private func isOwnHost(_ host: String) -> Bool {
        if hosts.contains(host) { return true }
        guard anyAddress, let colon = host.lastIndex(of: ":") else { return false }
        let name = host[..<colon]
        if name.hasPrefix("[") && name.hasSuffix("]") { return Self.isIPv6(String(name.dropFirst().dropLast())) }
        return Self.isIPv4(String(name))
    }

    static func isIPv4(_ text: String) -> Bool {
        var address = in_addr()
        return inet_pton(AF_INET, text, &address) == 1
    }

    static func isIPv6(_ text: String) -> Bool {
        var address = in6_addr()
        return inet_pton(AF_INET6, text, &address) == 1
    }

    static func cookie(_ name: String, in header: String) -> String? {
        for part in header.split(separator: ";") {
            let pair = part.drop { $0 == " " }
            guard let equals = pair.firstIndex(of: "="), pair[..<equals] == name else { continue }
            return String(pair[pair.index(after: equals)...])
        }
        return nil
    }

    /// Compares without stopping at the first difference, so timing does not reveal the token.
    private func sameText(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for index in x.indices { difference |= x[index] ^ y[index] }
        return difference == 0
    }
}
