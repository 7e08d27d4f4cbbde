import Crypto
import Foundation
import WSTapDissect
import WSTapWire

/// Turns both directions of a captured TLS connection back into cleartext with secrets from a key log,
/// as Wireshark does: TLS 1.3 (RFC 8446 §7: handshake then application traffic secrets, KeyUpdate) and
/// TLS 1.2 AEAD suites (RFC 5246 §6.3 key block from the master secret; RFC 5288, RFC 7905).
/// AES-128/256-GCM and ChaCha20-Poly1305. Sans-IO: ciphertext in, cleartext out.
package final class TLSStreamDecryptor {
    enum State: Equatable {
        case handshaking
        case decrypting
        /// Nothing more will come out; the reason is for the user.
        case stopped(String)
    }

    private(set) var state = State.handshaking
    private(set) var serverName: String?
    private let keyLog: TLSKeyLog
    private var clientRandom: [UInt8]?
    private var suite: CipherSuite?
    private var isTLS13 = false
    private var buffers: [Direction: [UInt8]] = [.clientToServer: [], .serverToClient: []]
    private var keys: [Direction: TrafficKeys] = [:]
    /// TLS 1.3: handshake messages inside encrypted records, reassembled to find Finished and KeyUpdate.
    private var innerHandshake: [Direction: [UInt8]] = [.clientToServer: [], .serverToClient: []]
    private var applicationSecrets: [Direction: [UInt8]] = [:]
    /// Key log label of the secret a direction switches to at its next record (resolved lazily).
    private var pending: [Direction: String] = [:]
    private static let helloRetryRandom: [UInt8] = Array(SHA256.hash(data: Array("HelloRetryRequest".utf8)))

    package init(keyLog: TLSKeyLog) {
        self.keyLog = keyLog
    }

    /// Feeds ciphertext from one side; returns the cleartext application data it completed.
    package func feed(_ data: [UInt8], from direction: Direction) -> [UInt8] {
        if case .stopped = state { return [] }
        buffers[direction]! += data
        var cleartext: [UInt8] = []
        var buffer = buffers[direction]!
        var start = 0
        while buffer.count - start >= 5 {
            let length = Int(buffer[start + 3]) << 8 | Int(buffer[start + 4])
            guard buffer.count - start >= 5 + length else { break }
            let record = Array(buffer[start..<(start + 5 + length)])
            guard process(record: record, from: direction, into: &cleartext) else { break }  // waiting for keys
            start += 5 + length
            if case .stopped = state { break }
        }
        buffer.removeFirst(start)
        buffers[direction] = buffer
        if length(ofFirstRecordIn: buffer) > 5 + (1 << 14) + 256 { stop("a TLS record longer than TLS allows: this is not TLS") }
        if buffer.count > Self.maximumWaiting, let clientRandom { stop(noKeyReason(clientRandom)) }
        return cleartext
    }

    /// Ciphertext held while the key log does not yet have a secret (a live capture can see a handshake
    /// before the client has logged its keys); beyond this, the key is taken to be missing.
    static let maximumWaiting = 4 << 20

    private func length(ofFirstRecordIn buffer: [UInt8]) -> Int {
        buffer.count >= 5 ? Int(buffer[3]) << 8 | Int(buffer[4]) : 0
    }

    /// Why nothing came out, if the connection ends now.
    var reasonIfUnfinished: String {
        if case .stopped(let reason) = state { return reason }
        if let clientRandom, !pending.isEmpty { return noKeyReason(clientRandom) }
        return "the handshake did not complete in the capture"
    }

    private func stop(_ reason: String) {
        if case .stopped = state { return }
        state = .stopped(reason)
        buffers = [:]
    }

    /// Returns false when the record needs a secret the key log does not have yet: it stays buffered.
    private func process(record: [UInt8], from direction: Direction, into cleartext: inout [UInt8]) -> Bool {
        let type = record[0]
        let body = Array(record[5...])
        if isTLS13 && type == 20 { return true }  // middlebox-compatibility ChangeCipherSpec, never encrypted
        if keys[direction] == nil, let label = pending[direction] {
            guard let installed = resolve(label, for: direction) else { return false }
            keys[direction] = installed
            pending[direction] = nil
        }
        if let key = keys[direction] {
            guard let (content, innerType) = key.open(record: record, body: body, tls13: isTLS13, type: type) else {
                stop("a TLS record from the \(direction == .clientToServer ? "client" : "server") did not decrypt with the logged secret (wrong or stale key log?)")
                return true
            }
            keys[direction]!.sequence += 1
            switch innerType {
            case 23:
                state = .decrypting
                cleartext += content
            case 22 where isTLS13:
                innerHandshakeMessages(content, from: direction)
            default:
                break  // alerts, TLS 1.2 Finished
            }
            return true
        }
        switch type {
        case 22: plainHandshake(body, from: direction)
        case 20:
            // TLS 1.2 ChangeCipherSpec: this side encrypts from its next record on, with the key block
            // derived from the master secret.
            pending[direction] = "CLIENT_RANDOM"
        case 23:
            stop(clientRandom == nil ? "application data before any ClientHello was seen" : "encrypted data where the handshake says there is none")
        default:
            break
        }
        return true
    }

    /// Keys for `direction` from the secret called `label`, if the key log has it (now).
    private func resolve(_ label: String, for direction: Direction) -> TrafficKeys? {
        guard let suite, let clientRandom, let secret = keyLog.secret(label, clientRandom: clientRandom) else { return nil }
        if label == "CLIENT_RANDOM" {
            guard let serverRandom else { return nil }
            let (keyLength, ivLength) = (suite.keyLength, suite.tls12IVLength)
            let block = TLS12PRF.expand(secret: secret, label: "key expansion", seed: serverRandom + clientRandom,
                                        count: 2 * keyLength + 2 * ivLength, sha384: suite.usesSHA384)
            let clientKey = Array(block[0..<keyLength]), serverKey = Array(block[keyLength..<(2 * keyLength)])
            let clientIV = Array(block[(2 * keyLength)..<(2 * keyLength + ivLength)])
            let serverIV = Array(block[(2 * keyLength + ivLength)...])
            return direction == .clientToServer
                ? TrafficKeys(key: clientKey, iv: clientIV, suite: suite)
                : TrafficKeys(key: serverKey, iv: serverIV, suite: suite)
        }
        if label.hasSuffix("TRAFFIC_SECRET_0") { applicationSecrets[direction] = secret }
        return TrafficKeys(tls13Secret: secret, suite: suite)
    }

    private func plainHandshake(_ body: [UInt8], from direction: Direction) {
        guard body.count >= 4 + 2 + 32 else { return }
        switch body[0] {
        case 1 where direction == .clientToServer:
            clientRandom = Array(body[6..<38])
            if case .clientHello(let name) = TLSClientHello.parse([22, 3, 1, UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body) {
                serverName = name
            }
        case 2 where direction == .serverToClient:
            serverHello(body)
        default:
            break
        }
    }

    private func serverHello(_ body: [UInt8]) {
        var reader = ByteReader(body[4...])
        guard reader.skip(2), let random = reader.take(32), random != Self.helloRetryRandom,
              let sessionLength = reader.u8(), reader.skip(Int(sessionLength)),
              let suiteValue = reader.u16(), reader.skip(1) else { return }
        var version13 = false
        if let extensionsLength = reader.u16(), let extensions = reader.take(Int(extensionsLength)) {
            var list = ByteReader(extensions[...])
            while let type = list.u16(), let length = list.u16(), let value = list.take(Int(length)) {
                if type == 0x002B && value == [0x03, 0x04] { version13 = true }
            }
        }
        guard let suite = CipherSuite(rawValue: suiteValue) else {
            stop(String(format: "cipher suite 0x%04X is not one wstap decrypts (AES-GCM and ChaCha20-Poly1305 are)", suiteValue))
            return
        }
        guard suite.isTLS13 == version13 else { stop("the server chose a suite that does not match its TLS version"); return }
        self.suite = suite
        isTLS13 = version13
        guard clientRandom != nil else { stop("the ClientHello was not captured"); return }
        serverRandom = random
        if version13 {
            // Everything after ServerHello is encrypted with the handshake secrets, looked up when needed.
            pending[.clientToServer] = "CLIENT_HANDSHAKE_TRAFFIC_SECRET"
            pending[.serverToClient] = "SERVER_HANDSHAKE_TRAFFIC_SECRET"
        }
    }

    private var serverRandom: [UInt8]?

    private func noKeyReason(_ random: [UInt8]) -> String {
        "no key for client random \(Hex.encode(random).prefix(16))… in the key log"
    }

    /// TLS 1.3 handshake messages after ServerHello: Finished ends a side's handshake keys, KeyUpdate
    /// moves a side to its next application secret.
    private func innerHandshakeMessages(_ content: [UInt8], from direction: Direction) {
        innerHandshake[direction]! += content
        var messages = innerHandshake[direction]!
        var start = 0
        while messages.count - start >= 4 {
            let length = Int(messages[start + 1]) << 16 | Int(messages[start + 2]) << 8 | Int(messages[start + 3])
            guard messages.count - start >= 4 + length else { break }
            let type = messages[start]
            start += 4 + length
            guard let suite else { continue }
            if type == 20 {  // Finished: this side's next record uses its first application traffic secret
                keys[direction] = nil
                pending[direction] = direction == .clientToServer ? "CLIENT_TRAFFIC_SECRET_0" : "SERVER_TRAFFIC_SECRET_0"
            } else if type == 24, let current = applicationSecrets[direction] {  // KeyUpdate (RFC 8446 §7.2)
                let next = HKDFLabel.expand(secret: current, label: "traffic upd", length: suite.hashLength, sha384: suite.usesSHA384)
                applicationSecrets[direction] = next
                keys[direction] = TrafficKeys(tls13Secret: next, suite: suite)
            }
        }
        messages.removeFirst(start)
        innerHandshake[direction] = messages
    }
}

enum CipherSuite: UInt16 {
    case tls13AES128GCM = 0x1301, tls13AES256GCM = 0x1302, tls13ChaCha20 = 0x1303
    case ecdheRSAAES128GCM = 0xC02F, ecdheECDSAAES128GCM = 0xC02B
    case ecdheRSAAES256GCM = 0xC030, ecdheECDSAAES256GCM = 0xC02C
    case ecdheRSAChaCha20 = 0xCCA8, ecdheECDSAChaCha20 = 0xCCA9
    case rsaAES128GCM = 0x009C, rsaAES256GCM = 0x009D

    var isTLS13: Bool { rawValue >> 8 == 0x13 }
    var isChaCha: Bool { [.tls13ChaCha20, .ecdheRSAChaCha20, .ecdheECDSAChaCha20].contains(self) }
    var keyLength: Int { [.tls13AES128GCM, .ecdheRSAAES128GCM, .ecdheECDSAAES128GCM, .rsaAES128GCM].contains(self) ? 16 : 32 }
    var usesSHA384: Bool { [.tls13AES256GCM, .ecdheRSAAES256GCM, .ecdheECDSAAES256GCM, .rsaAES256GCM].contains(self) }
    var hashLength: Int { usesSHA384 ? 48 : 32 }
    /// TLS 1.2 GCM takes a 4-byte implicit salt and sends 8 bytes of nonce per record (RFC 5288);
    /// ChaCha20 uses a 12-byte IV XORed with the sequence number (RFC 7905).
    var tls12IVLength: Int { isChaCha ? 12 : 4 }
}

/// One direction's record protection: key, IV, and the record sequence number.
struct TrafficKeys {
    let key: SymmetricKey
    let iv: [UInt8]
    let suite: CipherSuite
    var sequence: UInt64 = 0

    init(key: [UInt8], iv: [UInt8], suite: CipherSuite) {
        self.key = SymmetricKey(data: key)
        self.iv = iv
        self.suite = suite
    }

    init(tls13Secret secret: [UInt8], suite: CipherSuite) {
        self.init(key: HKDFLabel.expand(secret: secret, label: "key", length: suite.keyLength, sha384: suite.usesSHA384),
                  iv: HKDFLabel.expand(secret: secret, label: "iv", length: 12, sha384: suite.usesSHA384), suite: suite)
    }

    /// Decrypts one record; returns the content and its real type (TLS 1.3 hides it inside), or nil if
    /// authentication fails.
    func open(record: [UInt8], body: [UInt8], tls13: Bool, type: UInt8) -> ([UInt8], UInt8)? {
        let sequenceBytes = (0..<8).map { UInt8(truncatingIfNeeded: sequence >> (56 - 8 * $0)) }
        var nonce: [UInt8]
        var ciphertext = body[...]
        var additional: [UInt8]
        if tls13 || suite.isChaCha {
            nonce = iv
            for index in 0..<8 { nonce[4 + index] ^= sequenceBytes[index] }
        } else {
            guard body.count >= 8 else { return nil }
            nonce = iv + body.prefix(8)
            ciphertext = body.dropFirst(8)
        }
        guard ciphertext.count >= 16 else { return nil }
        let tag = ciphertext.suffix(16)
        let sealed = ciphertext.dropLast(16)
        if tls13 {
            additional = Array(record.prefix(5))
        } else {
            let length = sealed.count
            additional = sequenceBytes + [type, record[1], record[2], UInt8(length >> 8), UInt8(length & 0xFF)]
        }
        let plain: [UInt8]
        do {
            if suite.isChaCha {
                let box = try ChaChaPoly.SealedBox(nonce: ChaChaPoly.Nonce(data: nonce), ciphertext: sealed, tag: tag)
                plain = Array(try ChaChaPoly.open(box, using: key, authenticating: additional))
            } else {
                let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: nonce), ciphertext: sealed, tag: tag)
                plain = Array(try AES.GCM.open(box, using: key, authenticating: additional))
            }
        } catch {
            return nil
        }
        guard tls13 else { return (plain, type) }
        // TLSInnerPlaintext: content, the real type, then zero padding.
        guard let last = plain.lastIndex(where: { $0 != 0 }) else { return nil }
        return (Array(plain[..<last]), plain[last])
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
enum HKDFLabel {
    static func expand(secret: [UInt8], label: String, length: Int, sha384: Bool) -> [UInt8] {
        let full = Array("tls13 \(label)".utf8)
        let info = [UInt8(length >> 8), UInt8(length & 0xFF), UInt8(full.count)] + full + [0]
        let key = SymmetricKey(data: secret)
        let output = sha384
            ? HKDF<SHA384>.expand(pseudoRandomKey: key, info: info, outputByteCount: length)
            : HKDF<SHA256>.expand(pseudoRandomKey: key, info: info, outputByteCount: length)
        return output.withUnsafeBytes { Array($0) }
    }
}

/// The TLS 1.2 PRF (RFC 5246 §5): P_SHA256, or P_SHA384 for the SHA-384 suites.
enum TLS12PRF {
    static func expand(secret: [UInt8], label: String, seed: [UInt8], count: Int, sha384: Bool) -> [UInt8] {
        let key = SymmetricKey(data: secret)
        let fullSeed = Array(label.utf8) + seed
        func mac(_ data: [UInt8]) -> [UInt8] {
            sha384 ? Array(HMAC<SHA384>.authenticationCode(for: data, using: key)) : Array(HMAC<SHA256>.authenticationCode(for: data, using: key))
        }
        var output: [UInt8] = []
        var a = mac(fullSeed)
        while output.count < count {
            output += mac(a + fullSeed)
            a = mac(a)
        }
        return Array(output.prefix(count))
    }
}

/// A bounds-checked reader over handshake bytes.
struct ByteReader {
    private var bytes: ArraySlice<UInt8>
    init(_ bytes: ArraySlice<UInt8>) { self.bytes = bytes }
    mutating func u8() -> UInt8? { bytes.popFirst() }
    mutating func u16() -> UInt16? {
        guard bytes.count >= 2 else { return nil }
        defer { bytes = bytes.dropFirst(2) }
        return UInt16(bytes[bytes.startIndex]) << 8 | UInt16(bytes[bytes.startIndex + 1])
    }
    mutating func take(_ count: Int) -> [UInt8]? {
        guard bytes.count >= count else { return nil }
        defer { bytes = bytes.dropFirst(count) }
        return Array(bytes.prefix(count))
    }
    mutating func skip(_ count: Int) -> Bool { take(count) != nil }
}
