import CPcap
import WSTapDissect

#if canImport(Glibc)
import Glibc
#endif

/// A live libpcap capture on one interface feeding a `CaptureSession`, with the raw packets optionally
/// saved to a pcap file.
///
/// Blocking I/O, meant for its own thread. libpcap's `pcap_next_ex` can block far past its timeout on a
/// quiet interface (TPACKET_V3), so the handle is nonblocking and `run` waits in `poll` for at most
/// `pollInterval` milliseconds; a stop request is therefore seen within that time even when nothing moves.
public final class LiveCapture {
    public struct Options {
        public var interface: String
        public var filter: String?
        public var snapLength: Int32 = 262_144
        /// Kernel ring size; larger rides out bursts without drops.
        public var bufferBytes: Int32 = 32 << 20
        public var promiscuous = false
        public init(interface: String, filter: String? = nil) {
            self.interface = interface
            self.filter = filter
        }
    }

    public struct Summary {
        public var packets: Int
        public var tcpSegments: Int
        public var connections: Int
        /// libpcap's counters (`pcap_stats`): dropped because the buffer was full, and by the interface.
        public var droppedByKernel: UInt32
        public var droppedByInterface: UInt32
    }

    public let options: Options
    public let link: LinkType
    private let handle: OpaquePointer
    private var dumper: OpaquePointer?
    private let nanosecondTimestamps: Bool
    static let pollInterval: Int32 = 100

    /// Opens and activates the capture. Errors are one sentence that says how to fix them.
    public init(_ options: Options) throws {
        self.options = options
        var errorBuffer = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE))
        guard let handle = pcap_create(options.interface, &errorBuffer) else {
            throw PcapFile.Failure(description: "cannot capture on '\(options.interface)': \(Self.text(errorBuffer))")
        }
        pcap_set_snaplen(handle, options.snapLength)
        pcap_set_promisc(handle, options.promiscuous ? 1 : 0)
        pcap_set_timeout(handle, Self.pollInterval)
        pcap_set_immediate_mode(handle, 1)  // records should appear as the traffic happens
        pcap_set_buffer_size(handle, options.bufferBytes)
        _ = pcap_set_tstamp_precision(handle, Int32(PCAP_TSTAMP_PRECISION_NANO))  // falls back to µs where unsupported
        let status = pcap_activate(handle)
        if status < 0 {
            let detail = String(cString: pcap_geterr(handle))
            pcap_close(handle)
            throw PcapFile.Failure(description: Self.explain(activationStatus: status, interface: options.interface, detail: detail))
        }
        // Everything that can fail happens before the stored properties are set: a throwing init of a
        // fully initialised class runs deinit, which would close the handle a second time.
        do {
            let link = try PacketFeed.linkType(of: handle, name: "interface '\(options.interface)'")
            if let filter = options.filter { try Self.apply(filter: filter, to: handle) }
            if pcap_setnonblock(handle, 1, &errorBuffer) != 0 {
                throw PcapFile.Failure(description: "cannot capture on '\(options.interface)': \(Self.text(errorBuffer))")
            }
            self.link = link
        } catch {
            pcap_close(handle)
            throw error
        }
        self.handle = handle
        nanosecondTimestamps = pcap_get_tstamp_precision(handle) == Int32(PCAP_TSTAMP_PRECISION_NANO)
    }

    private static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    deinit {
        if let dumper { pcap_dump_close(dumper) }
        pcap_close(handle)
    }

    private static func apply(filter: String, to handle: OpaquePointer) throws {
        var program = bpf_program()
        guard pcap_compile(handle, &program, filter, 1, PCAP_NETMASK_UNKNOWN) == 0 else {
            throw PcapFile.Failure(description: "--bpf '\(filter)' is not a valid capture filter: \(String(cString: pcap_geterr(handle))). The syntax is tcpdump's (man pcap-filter), e.g. 'tcp port 8080'.")
        }
        defer { pcap_freecode(&program) }
        guard pcap_setfilter(handle, &program) == 0 else {
            throw PcapFile.Failure(description: "cannot apply --filter '\(filter)': \(String(cString: pcap_geterr(handle)))")
        }
    }

    static func explain(activationStatus status: Int32, interface: String, detail: String) -> String {
        switch status {
        case PCAP_ERROR_PERM_DENIED:
            return "capturing on '\(interface)' needs root or CAP_NET_RAW (\(detail)). Run it with sudo, or grant the binary the capability once: sudo setcap cap_net_raw,cap_net_admin=eip \"$(command -v wstap)\""
        case PCAP_ERROR_NO_SUCH_DEVICE:
            return "there is no interface '\(interface)'. List them with `ip link`; 'lo' is loopback and 'any' captures on all interfaces."
        case PCAP_ERROR_IFACE_NOT_UP:
            return "interface '\(interface)' is down. Bring it up with `ip link set \(interface) up`, or choose another with -i."
        case PCAP_ERROR_PROMISC_PERM_DENIED:
            return "promiscuous capture on '\(interface)' is not permitted (\(detail)). Drop --promiscuous or run as root."
        default:
            let name = String(cString: pcap_statustostr(status))
            return "cannot capture on '\(interface)': \(name)\(detail.isEmpty ? "" : " (\(detail))")."
        }
    }

    /// Also save every captured packet, unmodified, to a pcap file at `path` (flushed as packets arrive).
    public func write(to path: String) throws {
        guard let dumper = pcap_dump_open(handle, path) else {
            throw PcapFile.Failure(description: "--write: cannot create '\(path)': \(String(cString: pcap_geterr(handle))). Check that the directory exists and is writable.")
        }
        self.dumper = dumper
    }

    /// Captures until `shouldStop` says so (checked at least every `pollInterval` ms) or `limit` packets
    /// have been seen, then ends every open connection and returns the counts.
    public func run(session: CaptureSession, limit: Int? = nil, shouldStop: () -> Bool,
                    emit: ([TapRecord]) -> Void) throws -> Summary {
        var feed = PacketFeed(session: session, link: link, nanosecondTimestamps: nanosecondTimestamps)
        var pollDescriptor = pollfd(fd: pcap_get_selectable_fd(handle), events: Int16(POLLIN), revents: 0)
        var header: UnsafeMutablePointer<pcap_pkthdr>?
        var data: UnsafePointer<UInt8>?
        var seen = 0
        capture: while !shouldStop() {
            if let limit, seen >= limit { break }
            let ready = poll(&pollDescriptor, 1, Self.pollInterval)
            if ready < 0 && errno != EINTR {
                throw PcapFile.Failure(description: "capture on '\(options.interface)' failed: \(String(cString: strerror(errno)))")
            }
            // Drain what is there; in nonblocking mode pcap_next_ex returns 0 when the buffer is empty.
            var wrote = false
            while true {
                if let limit, seen >= limit { break }
                let status = pcap_next_ex(handle, &header, &data)
                guard status == 1, let header, let data else {
                    if status < 0 && status != -2 {
                        let reason = String(cString: pcap_geterr(handle))
                        feed.finish(emit: emit)
                        throw PcapFile.Failure(description: "capture on '\(options.interface)' failed: \(reason)")
                    }
                    break
                }
                seen += 1
                if let dumper {
                    pcap_dump(UnsafeMutablePointer<UInt8>(dumper), header, data)
                    wrote = true
                }
                feed.packet(header.pointee, data, emit: emit)
                if shouldStop() { break capture }
            }
            if wrote, let dumper { pcap_dump_flush(dumper) }
        }
        // Packets the kernel already holds arrived before the stop: record them too (tcpdump does not,
        // which can cut the end of a conversation that finished just before Ctrl-C). Bounded, so a busy
        // interface cannot keep the stop waiting.
        var drained = 0
        while drained < 100_000, limit.map({ seen < $0 }) ?? true, pcap_next_ex(handle, &header, &data) == 1, let header, let data {
            seen += 1
            drained += 1
            if let dumper { pcap_dump(UnsafeMutablePointer<UInt8>(dumper), header, data) }
            feed.packet(header.pointee, data, emit: emit)
        }
        if let dumper { pcap_dump_flush(dumper) }
        feed.finish(emit: emit)
        var stats = pcap_stat()
        let haveStats = pcap_stats(handle, &stats) == 0
        return Summary(packets: session.packets, tcpSegments: session.tcpSegments, connections: session.connectionsSeen,
                       droppedByKernel: haveStats ? stats.ps_drop : 0, droppedByInterface: haveStats ? stats.ps_ifdrop : 0)
    }
}
