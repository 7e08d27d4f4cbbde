import Testing
@testable import WSTapWire
import WSTapTestSupport

@Suite struct TLSClientHelloTests {
    static let withSNI = TLSHelloFixture.withSNI
    static let withoutSNI = TLSHelloFixture.withoutSNI

    @Test func readsTheServerName() {
        #expect(TLSClientHello.parse(Self.withSNI) == .clientHello(serverName: "foo.example"))
        #expect(TLSClientHello.parse(Self.withoutSNI) == .clientHello(serverName: nil))
    }

    @Test func asksForMoreBytesUntilTheRecordIsComplete() {
        for cut in [0, 1, 4, 5, 100, Self.withSNI.count - 1] {
            #expect(TLSClientHello.parse(Array(Self.withSNI.prefix(cut))) == .needMoreBytes, "cut at \(cut)")
        }
    }

    @Test func plainHTTPIsNotTLS() {
        #expect(TLSClientHello.parse(Array("GET / HTTP/1.1\r\n".utf8)) == .notTLS)
    }
}
