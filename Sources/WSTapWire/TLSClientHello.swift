/// Reads the server name (SNI, RFC 6066 §3) from a TLS ClientHello without terminating TLS, so the proxy
/// can decide whether to intercept or pass a tunnel through, and which certificate to present.
public enum TLSClientHello {
    public enum Result: Equatable, Sendable {
        /// More bytes are needed to see the whole first handshake record.
        case needMoreBytes
        /// Not a TLS handshake record.
        case notTLS
        /// A ClientHello; `serverName` is nil when the client sent no SNI (IP-literal hosts, for one).
        case clientHello(serverName: String?)
    }

    /// The largest first record accepted (TLS limits a record to 2^14 bytes plus overhead).
    public static let maximumRecord = 5 + (1 << 14) + 2048

    public static func parse(_ bytes: [UInt8]) -> Result {
        guard let first = bytes.first else { return .needMoreBytes }
        guard first == 0x16 else { return .notTLS }
        guard bytes.count >= 5 else { return .needMoreBytes }
        let recordLength = Int(bytes[3]) << 8 | Int(bytes[4])
        guard recordLength <= maximumRecord else { return .notTLS }
        guard bytes.count >= 5 + recordLength else { return .needMoreBytes }
        var reader = Reader(bytes: bytes[5..<(5 + recordLength)])
        // Handshake header: type 1 (ClientHello), 24-bit length. A ClientHello split across records
        // is legal but rare; the SNI is then read from the first record only.
        guard reader.u8() == 1, reader.skip(3) else { return .notTLS }
        guard reader.skip(2 + 32),  // legacy_version, random
              let sessionIDLength = reader.u8(), reader.skip(Int(sessionIDLength)),
              let suitesLength = reader.u16(), reader.skip(Int(suitesLength)),
              let compressionLength = reader.u8(), reader.skip(Int(compressionLength))
        else { return .clientHello(serverName: nil) }
        guard let extensionsLength = reader.u16() else { return .clientHello(serverName: nil) }
        var extensions = Reader(bytes: reader.take(Int(extensionsLength)) ?? [])
        while let type = extensions.u16(), let length = extensions.u16() {
            guard let body = extensions.take(Int(length)) else { break }
            guard type == 0 else { continue }  // server_name
            var names = Reader(bytes: body)
            guard let listLength = names.u16(), var list = names.take(Int(listLength)).map(Reader.init) else { break }
            while let nameType = list.u8(), let nameLength = list.u16(), let name = list.take(Int(nameLength)) {
                if nameType == 0 { return .clientHello(serverName: String(decoding: name, as: UTF8.self)) }
            }
        }
        return .clientHello(serverName: nil)
    }

    private struct Reader {
        var bytes: ArraySlice<UInt8>
        init(bytes: ArraySlice<UInt8>) { self.bytes = bytes }

        mutating func u8() -> UInt8? { bytes.popFirst() }
        mutating func u16() -> UInt16? {
            guard bytes.count >= 2 else { return nil }
            defer { bytes = bytes.dropFirst(2) }
            return UInt16(bytes[bytes.startIndex]) << 8 | UInt16(bytes[bytes.startIndex + 1])
        }
        mutating func skip(_ n: Int) -> Bool { take(n) != nil }
        mutating func take(_ n: Int) -> ArraySlice<UInt8>? {
            guard bytes.count >= n else { return nil }
            defer { bytes = bytes.dropFirst(n) }
            return bytes.prefix(n)
        }
    }
}
