import WSTapWire

#if canImport(Glibc)
import Glibc
#endif

/// TLS secrets in the NSS key log format (SSLKEYLOGFILE): `LABEL <client random hex> <secret hex>` per
/// line, `#` comments. Secrets come from a file (re-read when it grows, so a live capture can decrypt
/// handshakes whose keys a browser logs while wstap runs) and from pcapng Decryption Secrets Blocks.
public final class TLSKeyLog {
    /// client random (hex) → label → secret
    private var secrets: [String: [String: [UInt8]]] = [:]
    private let path: String?
    private var consumed: Int64 = 0

    public var isEmpty: Bool { secrets.isEmpty && path == nil }
    public var count: Int { secrets.count }

    public init() { path = nil }

    /// Reads `path` now; later lookups of unknown client randoms read what was appended since.
    public init(path: String) throws {
        self.path = path
        guard let text = Self.readFile(path, from: 0) else {
            throw PcapFile.Failure(description: "--keylog: cannot read '\(path)': \(String(cString: strerror(errno))). Give the file your client writes with SSLKEYLOGFILE.")
        }
        consumed = Int64(text.utf8.count)
        add(text: text)
    }

    /// Adds every well-formed line of `text`; returns how many were taken.
    @discardableResult
    public func add(text: String) -> Int {
        var taken = 0
        for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let fields = line.split(separator: " ")
            guard fields.count == 3, !line.hasPrefix("#"),
                  let random = Self.bytes(fromHex: fields[1]), random.count == 32,
                  let secret = Self.bytes(fromHex: fields[2]) else { continue }
            secrets[fields[1].lowercased(), default: [:]][String(fields[0])] = secret
            taken += 1
        }
        return taken
    }

    func secret(_ label: String, clientRandom: [UInt8]) -> [UInt8]? {
        let key = Hex.encode(clientRandom)
        if let found = secrets[key]?[label] { return found }
        reloadAppended()
        return secrets[key]?[label]
    }

    private func reloadAppended() {
        guard let path, let text = Self.readFile(path, from: consumed), !text.isEmpty else { return }
        // Only whole lines: a line still being written is read next time.
        guard let lastNewline = text.utf8.lastIndex(of: UInt8(ascii: "\n")) else { return }
        let complete = String(text[...lastNewline])
        consumed += Int64(complete.utf8.count)
        add(text: complete)
    }

    private static func readFile(_ path: String, from offset: Int64) -> String? {
        let descriptor = open(path, O_RDONLY)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        var position = offset
        while true {
            let count = chunk.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, off_t(position)) }
            if count < 0 { return nil }
            if count == 0 { break }
            bytes += chunk[..<count]
            position += Int64(count)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func bytes(fromHex text: Substring) -> [UInt8]? { Hex.decode(text.utf8) }
}

/// Finds the TLS key log lines embedded in a pcapng file's Decryption Secrets Blocks (type 0x0000000A,
/// secrets type 0x544C534B), which `editcap --inject-secrets` writes and libpcap skips.
public enum PcapngSecrets {
    public static func keyLogText(path: String) -> String? {
        let descriptor = open(path, O_RDONLY)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        return keyLogText { offset, count in
            var bytes = [UInt8](repeating: 0, count: count)
            let got = bytes.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, count, off_t(offset)) }
            return got < 0 ? nil : Array(bytes.prefix(got))
        }
    }

    /// The same for a capture held in memory.
    public static func keyLogText(bytes: [UInt8]) -> String? {
        keyLogText { offset, count in
            guard offset >= 0, offset < Int64(bytes.count) else { return [] }
            let start = Int(offset)
            return Array(bytes[start..<min(bytes.count, start + count)])
        }
    }

    /// Walks the blocks through `read(offset, count)`, which returns at most `count` bytes (fewer at the
    /// end of the file). Every length comes from the file, so each is checked before it is used: a
    /// secrets length larger than its block is damage, not a reason to allocate 4 GiB.
    static let maximumSecretsLength = 16 << 20

    static func keyLogText(read: (Int64, Int) -> [UInt8]?) -> String? {
        guard var header = read(0, 16), header.count >= 12,
              header[0] == 0x0A, header[1] == 0x0D, header[2] == 0x0D, header[3] == 0x0A else { return nil }
        // The Section Header Block's byte-order magic says how every number in the section is written.
        var bigEndian = header[8] == 0x1A
        func u32(_ at: Int) -> UInt32 {
            guard header.count >= at + 4 else { return 0 }
            let bytes = header[at..<(at + 4)].map(UInt32.init)
            return bigEndian ? bytes[0] << 24 | bytes[1] << 16 | bytes[2] << 8 | bytes[3]
                             : bytes[3] << 24 | bytes[2] << 16 | bytes[1] << 8 | bytes[0]
        }
        var text = ""
        var offset: Int64 = 0
        while let next = read(offset, 16), next.count >= 12 {
            header = next
            if u32(0) == 0x0A0D_0D0A { bigEndian = header[8] == 0x1A }
            let blockType = u32(0), blockLength = Int64(u32(4))
            guard blockLength >= 12, blockLength % 4 == 0 else { break }  // damaged: libpcap will say so
            if blockType == 0x0000_000A, header.count >= 16, u32(8) == 0x544C_534B {
                let length = Int(u32(12))
                // Key logs are small (a few hundred bytes per connection): a bigger one is damage.
                if Int64(length) <= blockLength - 16, length <= maximumSecretsLength,
                   let secrets = read(offset + 16, length), secrets.count == length {
                    text += String(decoding: secrets, as: UTF8.self) + "\n"
                }
            }
            offset += blockLength
        }
        return text.isEmpty ? nil : text
    }
}
