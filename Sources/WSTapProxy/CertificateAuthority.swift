import Crypto
import Foundation
import NIOConcurrencyHelpers
import NIOSSL
import SwiftASN1
import X509

/// wstap's own certificate authority: created on first use, then loaded. It signs a leaf certificate
/// for each host a client connects to, so intercepted TLS looks valid to clients that trust the CA.
///
/// Files in `directory` (mode 0700): `wstap-ca.pem` (certificate) and `wstap-ca-key.pem` (private key,
/// mode 0600, readable by its owner only).
public final class CertificateAuthority: Sendable {
    public let directory: String
    public let certificate: Certificate
    private let privateKey: Certificate.PrivateKey
    private let caForTLS: NIOSSLCertificate
    /// One key for every leaf: only the certificate differs per host, and P-256 keys are cheap to reuse.
    private let leafKey: P256.Signing.PrivateKey
    private let leafKeyForTLS: NIOSSLPrivateKey
    private let leaves = NIOLockedValueBox<[String: NIOSSLContextConfigurationOverride]>([:])

    public static let certificateFile = "wstap-ca.pem"
    public static let keyFile = "wstap-ca-key.pem"

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// `$WSTAP_CA_DIR`, else `~/.wstap`.
    public static var defaultDirectory: String {
        if let dir = ProcessInfo.processInfo.environment["WSTAP_CA_DIR"], !dir.isEmpty { return dir }
        return FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".wstap").path
    }

    public var certificatePath: String { (directory as NSString).appendingPathComponent(Self.certificateFile) }
    public var keyPath: String { (directory as NSString).appendingPathComponent(Self.keyFile) }

    /// Loads the CA from `directory`, creating the directory and a new CA when there is none.
    public static func loadOrCreate(directory: String) throws -> CertificateAuthority {
        let certPath = (directory as NSString).appendingPathComponent(certificateFile)
        let keyPath = (directory as NSString).appendingPathComponent(keyFile)
        let manager = FileManager.default
        if manager.fileExists(atPath: certPath) || manager.fileExists(atPath: keyPath) {
            do {
                let certificate = try Certificate(pemEncoded: String(contentsOfFile: certPath, encoding: .utf8))
                let key = try Certificate.PrivateKey(pemEncoded: String(contentsOfFile: keyPath, encoding: .utf8))
                return try CertificateAuthority(directory: directory, certificate: certificate, privateKey: key)
            } catch {
                throw Failure(description: "cannot load the CA from \(directory): \(error). Fix the files or move the directory away to have wstap create a new CA.")
            }
        }
        do {
            try manager.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try manager.setAttributes([.posixPermissions: 0o700], ofItemAtPath: directory)
        } catch {
            throw Failure(description: "cannot create the CA directory \(directory): \(error). Choose another one with --ca-dir.")
        }
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let name = try DistinguishedName {
            CommonName("wstap CA")
            OrganizationName("wstap")
        }
        let now = Date()
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: key.publicKey,
            notValidBefore: now.addingTimeInterval(-86_400), notValidAfter: now.addingTimeInterval(10 * 365 * 86_400),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(digitalSignature: true, keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: key.publicKey)
            },
            issuerPrivateKey: key)
        do {
            try writeFile(Array(key.serializeAsPEM().pemString.utf8), to: keyPath, mode: 0o600)
            try writeFile(Array(certificate.serializeAsPEM().pemString.utf8), to: certPath, mode: 0o644)
        } catch {
            throw Failure(description: "cannot write the CA to \(directory): \(error). Choose another directory with --ca-dir.")
        }
        return try CertificateAuthority(directory: directory, certificate: certificate, privateKey: key)
    }

    /// Writes `bytes` to `path` with exactly `mode`, whatever the umask: the file is created owner-only
    /// (so a secret is never readable by others, even for a moment) and then given `mode`.
    public static func writeFile(_ bytes: [UInt8], to path: String, mode: mode_t) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw Failure(description: "cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        guard fchmod(descriptor, mode) == 0 else { throw Failure(description: "cannot set the mode of \(path): \(String(cString: strerror(errno)))") }
        var written = 0
        while written < bytes.count {
            let result = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress! + written, $0.count - written) }
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else { throw Failure(description: "cannot write \(path): \(String(cString: strerror(errno)))") }
            written += result
        }
    }

    private init(directory: String, certificate: Certificate, privateKey: Certificate.PrivateKey) throws {
        self.directory = directory
        self.certificate = certificate
        self.privateKey = privateKey
        caForTLS = try NIOSSLCertificate(bytes: Self.der(certificate), format: .der)
        leafKey = P256.Signing.PrivateKey()
        leafKeyForTLS = try NIOSSLPrivateKey(bytes: Array(leafKey.pemRepresentation.utf8), format: .pem)
    }

    public var certificatePEM: String { (try? certificate.serializeAsPEM().pemString) ?? "" }
    public var certificateDER: [UInt8] { (try? Self.der(certificate)) ?? [] }

    /// The TLS identity for `host` (a DNS name or an IP literal), minted on first use and cached.
    public func identity(for host: String) throws -> NIOSSLContextConfigurationOverride {
        let key = host.lowercased()
        if let cached = leaves.withLockedValue({ $0[key] }) { return cached }
        let leaf = try mintLeaf(for: key)
        var identity = NIOSSLContextConfigurationOverride()
        identity.certificateChain = [.certificate(try NIOSSLCertificate(bytes: Self.der(leaf), format: .der)), .certificate(caForTLS)]
        identity.privateKey = .privateKey(leafKeyForTLS)
        leaves.withLockedValue { $0[key] = identity }
        return identity
    }

    /// A leaf certificate for `host`, signed by this CA (also used by tests to inspect SANs).
    public func mintLeaf(for host: String) throws -> Certificate {
        let alternativeName: GeneralName
        if let ip = IPAddressBytes.parse(host) {
            alternativeName = .ipAddress(ASN1OctetString(contentBytes: ArraySlice(ip)))
        } else {
            alternativeName = .dnsName(host)
        }
        let now = Date()
        return try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(leafKey.publicKey),
            notValidBefore: now.addingTimeInterval(-86_400), notValidAfter: now.addingTimeInterval(365 * 86_400),
            issuer: certificate.subject,
            subject: try DistinguishedName {
                CommonName(host)
                OrganizationName("wstap")
            },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames([alternativeName])
                AuthorityKeyIdentifier(keyIdentifier: try certificate.extensions.subjectKeyIdentifier?.keyIdentifier)
            },
            issuerPrivateKey: privateKey)
    }

    static func der(_ certificate: Certificate) throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return serializer.serializedBytes
    }
}

/// IP literals as bytes, for IP SANs (and to know not to send them as SNI).
enum IPAddressBytes {
    static func parse(_ text: String) -> [UInt8]? {
        var host = text
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}
