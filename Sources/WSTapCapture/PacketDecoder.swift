/// Decodes captured link-layer frames down to TCP segments. Pure functions over bytes: no libpcap here,
/// so tests can feed synthesized packets.
public struct TCPSegment: Equatable, Sendable {
    public var source: Endpoint
    public var destination: Endpoint
    public var sequence: UInt32
    public var acknowledgment: UInt32
    public var flags: UInt8
    public var payload: [UInt8]
    /// The payload was cut by the capture's snap length: `payload` holds fewer bytes than were sent.
    public var truncatedBy: Int

    public init(source: Endpoint, destination: Endpoint, sequence: UInt32, acknowledgment: UInt32, flags: UInt8,
                payload: [UInt8], truncatedBy: Int) {
        self.source = source
        self.destination = destination
        self.sequence = sequence
        self.acknowledgment = acknowledgment
        self.flags = flags
        self.payload = payload
        self.truncatedBy = truncatedBy
    }

    public var syn: Bool { flags & 0x02 != 0 }
    public var fin: Bool { flags & 0x01 != 0 }
    public var rst: Bool { flags & 0x04 != 0 }
    public var ackFlag: Bool { flags & 0x10 != 0 }
}

/// An IP address and TCP port, printed as "ip:port" ("[v6]:port" for IPv6).
///
/// The address is held inline (two words, not an array): every captured segment carries two endpoints,
/// and the reassembler hashes and compares them per packet.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    /// Address bytes 0–7 and 8–15, big-endian, so comparing the words compares the bytes in order.
    /// An IPv4 address fills the first four bytes.
    private var high: UInt64
    private var low: UInt64
    private var isIPv6: Bool
    public var port: UInt16

    public init(address: [UInt8], port: UInt16) {
        precondition(address.count == 4 || address.count == 16, "an IPv4 or IPv6 address")
        var high: UInt64 = 0, low: UInt64 = 0
        for (index, byte) in address.enumerated() {
            if index < 8 { high |= UInt64(byte) << (56 - 8 * UInt64(index)) } else { low |= UInt64(byte) << (56 - 8 * UInt64(index - 8)) }
        }
        self.init(high: high, low: low, isIPv6: address.count == 16, port: port)
    }

    init(high: UInt64, low: UInt64, isIPv6: Bool, port: UInt16) {
        self.high = high
        self.low = low
        self.isIPv6 = isIPv6
        self.port = port
    }

    public var address: [UInt8] {
        (0..<(isIPv6 ? 16 : 4)).map { index in UInt8(truncatingIfNeeded: (index < 8 ? high : low) >> (56 - 8 * UInt64(index % 8))) }
    }

    /// Address order (bytes compared in turn), then port: how the reassembler names a connection
    /// the same way from both directions.
    static func precedes(_ x: Endpoint, _ y: Endpoint) -> Bool {
        (x.high, x.low, x.port) < (y.high, y.low, y.port)
    }

    /// A cheap hash for spreading connections over threads (the same on every run, unlike `hashValue`).
    var spreadHash: UInt64 {
        let mixed = (high ^ (low << 17 | low >> 47) ^ UInt64(port)) &* 0x9E37_79B9_7F4A_7C15
        return mixed ^ mixed >> 32
    }

    public var description: String {
        let address = address
        if !isIPv6 { return address.map(String.init).joined(separator: ".") + ":\(port)" }
        var groups: [String] = []
        for i in stride(from: 0, to: address.count, by: 2) { groups.append(String(UInt16(address[i]) << 8 | UInt16(address[i + 1]), radix: 16)) }
        return "[\(Self.compress(groups))]:\(port)"
    }

    /// RFC 5952: the longest run of zero groups becomes "::".
    private static func compress(_ groups: [String]) -> String {
        var best = (start: -1, length: 0)
        var i = 0
        while i < groups.count {
            guard groups[i] == "0" else { i += 1; continue }
            var j = i
            while j < groups.count && groups[j] == "0" { j += 1 }
            if j - i > best.length && j - i > 1 { best = (i, j - i) }
            i = j
        }
        guard best.start >= 0 else { return groups.joined(separator: ":") }
        let head = groups[..<best.start].joined(separator: ":")
        let tail = groups[(best.start + best.length)...].joined(separator: ":")
        return head + "::" + tail
    }
}

public enum LinkType: Int32, Sendable {
    case null = 0            // BSD loopback: 4-byte address family in host order (NIOWritePCAPHandler writes these)
    case ethernet = 1
    case raw = 101           // raw IPv4/IPv6 (LINKTYPE_RAW)
    case loop = 108          // OpenBSD loopback: address family in network order
    case linuxSLL = 113
    case rawIPv4 = 228
    case rawIPv6 = 229
    case linuxSLL2 = 276
    case dltRaw12 = 12       // DLT_RAW on some systems
    case dltRaw14 = 14
}

public enum PacketDecoder {
    /// The TCP segment in a captured frame, or nil for anything else (ARP, UDP, fragments, …).
    /// `originalLength` is the packet's length on the wire, to detect snap-length truncation.
    public static func tcpSegment(link: LinkType, frame: [UInt8], originalLength: Int) -> TCPSegment? {
        frame.withUnsafeBufferPointer { tcpSegment(link: link, frame: $0, originalLength: originalLength) }
    }

    /// The same, straight from a buffer libpcap owns: only the TCP payload is copied.
    public static func tcpSegment(link: LinkType, frame: UnsafeBufferPointer<UInt8>, originalLength: Int) -> TCPSegment? {
        guard let (offset, version) = networkLayer(link: link, frame: frame) else { return nil }
        return ip(frame, at: offset, version: version, missing: max(0, originalLength - frame.count))
    }

    /// Where the IP header starts, and which IP version (4 or 6; 0 = read it from the header).
    static func networkLayer(link: LinkType, frame: UnsafeBufferPointer<UInt8>) -> (Int, Int)? {
        switch link {
        case .null, .loop:
            guard frame.count >= 4 else { return nil }
            // Address family, host order for NULL (either endianness seen in files), network order for LOOP.
            let le = Int(frame[0]) | Int(frame[1]) << 8, be = Int(frame[3]) | Int(frame[2]) << 8
            let family = link == .loop ? be : (le != 0 ? le : be)
            if family == 2 { return (4, 4) }
            if [10, 24, 28, 30].contains(family) { return (4, 6) }  // AF_INET6 differs per OS
            return nil
        case .ethernet:
            var offset = 12
            var type = 0
            repeat {
                guard frame.count >= offset + 2 else { return nil }
                type = Int(frame[offset]) << 8 | Int(frame[offset + 1])
                offset += 2
                if type == 0x8100 || type == 0x88A8 { offset += 2 }  // VLAN tags (802.1Q, QinQ)
            } while type == 0x8100 || type == 0x88A8
            return type == 0x0800 ? (offset, 4) : type == 0x86DD ? (offset, 6) : nil
        case .linuxSLL:
            guard frame.count >= 16 else { return nil }
            let type = Int(frame[14]) << 8 | Int(frame[15])
            return type == 0x0800 ? (16, 4) : type == 0x86DD ? (16, 6) : nil
        case .linuxSLL2:
            guard frame.count >= 20 else { return nil }
            let type = Int(frame[0]) << 8 | Int(frame[1])
            return type == 0x0800 ? (20, 4) : type == 0x86DD ? (20, 6) : nil
        case .raw, .dltRaw12, .dltRaw14:
            return (0, 0)
        case .rawIPv4:
            return (0, 4)
        case .rawIPv6:
            return (0, 6)
        }
    }

    static func ip(_ p: UnsafeBufferPointer<UInt8>, at start: Int, version hinted: Int, missing: Int) -> TCPSegment? {
        guard p.count > start else { return nil }
        let version = hinted != 0 ? hinted : Int(p[start] >> 4)
        func u16(_ i: Int) -> UInt16 { UInt16(p[i]) << 8 | UInt16(p[i + 1]) }
        func u32(_ i: Int) -> UInt32 { UInt32(p[i]) << 24 | UInt32(p[i + 1]) << 16 | UInt32(p[i + 2]) << 8 | UInt32(p[i + 3]) }
        func u64(_ i: Int) -> UInt64 { UInt64(u32(i)) << 32 | UInt64(u32(i + 4)) }
        var offset: Int
        // Address words as `Endpoint` keeps them: big-endian, IPv4 in the top four bytes.
        var source: (UInt64, UInt64), destination: (UInt64, UInt64)
        var ipEnd: Int
        if version == 4 {
            guard p.count >= start + 20 else { return nil }
            let headerLength = Int(p[start] & 0x0F) * 4
            let total = Int(p[start + 2]) << 8 | Int(p[start + 3])
            let fragment = (Int(p[start + 6]) << 8 | Int(p[start + 7])) & 0x3FFF
            guard p[start + 9] == 6, fragment == 0, headerLength >= 20 else { return nil }  // TCP, not fragmented
            source = (UInt64(u32(start + 12)) << 32, 0)
            destination = (UInt64(u32(start + 16)) << 32, 0)
            offset = start + headerLength
            // total 0 happens with TSO/GRO captures: trust the captured length then.
            ipEnd = total == 0 ? p.count + missing : start + total
        } else if version == 6 {
            guard p.count >= start + 40 else { return nil }
            var next = p[start + 6]
            let payloadLength = Int(p[start + 4]) << 8 | Int(p[start + 5])
            source = (u64(start + 8), u64(start + 16))
            destination = (u64(start + 24), u64(start + 32))
            offset = start + 40
            ipEnd = payloadLength == 0 ? p.count + missing : offset + payloadLength
            // Skip extension headers (hop-by-hop, routing, destination options); fragments are not reassembled.
            while next == 0 || next == 43 || next == 60 {
                guard p.count >= offset + 2 else { return nil }
                next = p[offset]
                offset += (Int(p[offset + 1]) + 1) * 8
            }
            guard next == 6 else { return nil }
        } else {
            return nil
        }
        guard p.count >= offset + 20 else { return nil }
        let dataOffset = Int(p[offset + 12] >> 4) * 4
        guard dataOffset >= 20 else { return nil }
        let payloadStart = offset + dataOffset
        let payloadEndOnWire = max(payloadStart, ipEnd)
        let payloadEnd = min(p.count, payloadEndOnWire)
        let isIPv6 = version == 6
        return TCPSegment(
            source: Endpoint(high: source.0, low: source.1, isIPv6: isIPv6, port: u16(offset)),
            destination: Endpoint(high: destination.0, low: destination.1, isIPv6: isIPv6, port: u16(offset + 2)),
            sequence: u32(offset + 4), acknowledgment: u32(offset + 8), flags: p[offset + 13],
            payload: payloadStart < payloadEnd ? Array(p[payloadStart..<payloadEnd]) : [],
            truncatedBy: max(0, payloadEndOnWire - max(payloadEnd, payloadStart)))
    }
}
