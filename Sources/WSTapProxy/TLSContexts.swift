import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import WSTapFormats

/// The TLS contexts of one proxy: server contexts with minted certificates for the client leg, one
/// client context for the upstream leg. Contexts are expensive to build, so they are cached.
public final class TLSContexts: Sendable {
    public let authority: CertificateAuthority?
    let upstream: NIOSSLContext
    private let keyLog: OutputFile?
    private let serverContexts = NIOLockedValueBox<[String: NIOSSLContext]>([:])

    /// - Parameters:
    ///   - upstreamCAFile: extra trusted roots for upstream certificates, on top of the system's.
    ///   - insecure: do not verify upstream certificates at all.
    ///   - keyLog: NSS key log lines for both legs (SSLKEYLOGFILE format), so captures can be decrypted.
    public init(authority: CertificateAuthority?, upstreamCAFile: String?, insecure: Bool, keyLog: OutputFile?) throws {
        self.authority = authority
        self.keyLog = keyLog
        var config = TLSConfiguration.makeClientConfiguration()
        config.applicationProtocols = ["http/1.1"]
        if insecure { config.certificateVerification = .none }
        if let upstreamCAFile { config.additionalTrustRoots = [.file(upstreamCAFile)] }
        Self.addKeyLog(keyLog, to: &config)
        upstream = try NIOSSLContext(configuration: config)
    }

    private static func addKeyLog(_ keyLog: OutputFile?, to config: inout TLSConfiguration) {
        // Each callback is one complete line ending in "\n"; OutputFile writes it atomically under its lock.
        if let keyLog { config.keyLogCallback = { line in keyLog.write(Array(line.readableBytesView)) } }
    }

    /// A server context presenting a certificate for `host` (an intercepted CONNECT target).
    func serverContext(for host: String) throws -> NIOSSLContext {
        let key = host.lowercased()
        if let cached = serverContexts.withLockedValue({ $0[key] }) { return cached }
        guard let authority else { throw ProxyError(description: "TLS interception needs a CA") }
        let identity = try authority.identity(for: key)
        var config = TLSConfiguration.makeServerConfiguration(certificateChain: identity.certificateChain ?? [], privateKey: identity.privateKey!)
        // Only HTTP/1.1, so WebSocket upgrades stay on HTTP/1.1 (RFC 6455), never h2.
        config.applicationProtocols = ["http/1.1"]
        Self.addKeyLog(keyLog, to: &config)
        let context = try NIOSSLContext(configuration: config)
        serverContexts.withLockedValue { $0[key] = context }
        return context
    }

    /// For --listen-tls: the certificate follows the client's SNI, else `defaultHost`.
    func listenContext(defaultHost: String) throws -> NIOSSLContext {
        guard let authority else { throw ProxyError(description: "--listen-tls needs a CA") }
        let fallback = try authority.identity(for: defaultHost)
        var config = TLSConfiguration.makeServerConfiguration(certificateChain: fallback.certificateChain ?? [], privateKey: fallback.privateKey!)
        config.applicationProtocols = ["http/1.1"]
        config.sslContextCallback = { values, promise in
            do {
                promise.succeed(try authority.identity(for: values.serverHostname ?? defaultHost))
            } catch {
                promise.fail(error)
            }
        }
        Self.addKeyLog(keyLog, to: &config)
        return try NIOSSLContext(configuration: config)
    }
}
