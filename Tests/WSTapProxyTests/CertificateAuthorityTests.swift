import Foundation
import Testing
import X509
@testable import WSTapProxy

@Suite struct CertificateAuthorityTests {
    @Test func leavesCarryTheRightSubjectAlternativeName() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("wstap-ca-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try CertificateAuthority.loadOrCreate(directory: dir)
        let byName = try ca.mintLeaf(for: "chat.example.test")
        #expect(try byName.extensions.subjectAlternativeNames.map(Array.init) == [.dnsName("chat.example.test")])
        let byIP = try ca.mintLeaf(for: "::1")
        #expect(try byIP.extensions.subjectAlternativeNames?.count == 1)
        #expect(try byName.extensions.basicConstraints == .notCertificateAuthority)
        #expect(byName.issuer == ca.certificate.subject)
        // Loading again gives the same CA, not a new one.
        #expect(try CertificateAuthority.loadOrCreate(directory: dir).certificate == ca.certificate)
    }

    @Test func ipLiteralsAreRecognised() {
        #expect(IPAddressBytes.parse("127.0.0.1") == [127, 0, 0, 1])
        #expect(IPAddressBytes.parse("[::1]")?.count == 16)
        #expect(IPAddressBytes.parse("localhost") == nil)
    }
}
