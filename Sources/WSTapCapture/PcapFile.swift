import CPcap
#if canImport(Glibc)
import Glibc
#endif
import WSTapDissect

/// Reads a pcap or pcapng file through libpcap and feeds a `CaptureSession`.
public enum PcapFile {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// How far a read has got, for a progress line.
    public struct Progress {
        public var bytesRead: Int64
        public var packets: Int
        public var connections: Int
    }

    /// What a read noticed about the file itself, beside the records.
    public struct Summary: Sendable, Equatable {
        /// Packets whose timestamps lie beyond the year 2262 (a Timestamp's range): their records carry
        /// the latest time that can be represented.
        public var clampedTimestamps = 0
    }

    /// Reads `path` to its end, handing records to `emit` as they are produced. A damaged file is read
    /// up to the damage; then this throws, and everything read before has been emitted.
    /// `progress` is called about every 4,096 packets with the file position.
    @discardableResult
    public static func read(path: String, session: CaptureSession, emit: ([TapRecord]) -> Void,
                            progress: ((Progress) -> Void)? = nil) throws -> Summary {
        let opened = try open(path)
        defer { opened.close() }
        return try read(opened.handle, name: path, session: session, emit: emit, progress: progress)
    }

    /// A capture held in memory (the fuzz targets read files this way), through the same libpcap path.
    @discardableResult
    public static func read(bytes: [UInt8], session: CaptureSession, emit: ([TapRecord]) -> Void) throws -> Summary {
        guard !bytes.isEmpty else { throw Failure(description: "the capture is empty") }
        var copy = bytes
        return try copy.withUnsafeMutableBytes { raw in
            guard let file = fmemopen(raw.baseAddress, raw.count, "rb") else {
                throw Failure(description: "cannot open the capture in memory")
            }
            var errorBuffer = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE))
            guard let handle = pcap_fopen_offline_with_tstamp_precision(file, UInt32(PCAP_TSTAMP_PRECISION_NANO), &errorBuffer) else {
                fclose(file)
                throw Failure(description: errorBuffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
            }
            defer { pcap_close(handle) }
            return try read(handle, name: "memory", session: session, emit: emit, progress: nil)
        }
    }

    private static func read(_ handle: OpaquePointer, name path: String, session: CaptureSession, emit: ([TapRecord]) -> Void,
                             progress: ((Progress) -> Void)?) throws -> Summary {
        let link = try PacketFeed.linkType(of: handle, name: "'\(path)'")
        var feed = PacketFeed(session: session, link: link, nanosecondTimestamps: true)
        var header: UnsafeMutablePointer<pcap_pkthdr>?
        var data: UnsafePointer<UInt8>?
        let file = pcap_file(handle)
        while true {
            let status = pcap_next_ex(handle, &header, &data)
            if status == 1, let header, let data {
                feed.packet(header.pointee, data, emit: emit)
                if let progress, session.packets & 4095 == 0 {
                    progress(Progress(bytesRead: file.map { Int64(ftello($0)) } ?? 0, packets: session.packets, connections: session.connectionsSeen))
                }
            } else if status == -2 {
                break  // end of file
            } else {
                let reason = String(cString: pcap_geterr(handle))
                feed.finish(emit: emit)
                throw Failure(description: "'\(path)' is damaged after \(session.packets) packets: \(reason). Records up to there were written.")
            }
        }
        feed.finish(emit: emit)
        return Summary(clampedTimestamps: feed.time.clamped)
    }
}

extension PcapFile {
    /// A capture file opened for libpcap, timestamps in nanoseconds.
    struct OpenedFile {
        let handle: OpaquePointer
        /// stdio's buffer for the file: libpcap reads through stdio, whose default 4 KiB buffer meant
        /// a read(2) per 4 KiB (25,000 system calls for a 100 MB capture); 1 MiB makes it a hundred.
        /// glibc ignores a size passed without a buffer, hence our own.
        private let buffer: UnsafeMutableRawPointer

        init(handle: OpaquePointer, buffer: UnsafeMutableRawPointer) {
            self.handle = handle
            self.buffer = buffer
        }

        /// Closes the handle (and with it the file), then frees the buffer stdio was using.
        func close() {
            pcap_close(handle)
            buffer.deallocate()
        }
    }

    static let readBufferSize = 1 << 20

    static func open(_ path: String) throws -> OpenedFile {
        guard let file = fopen(path, "rb") else {
            throw Failure(description: "cannot read '\(path)': \(String(cString: strerror(errno)))")
        }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: readBufferSize, alignment: 16)
        setvbuf(file, buffer.assumingMemoryBound(to: CChar.self), _IOFBF, readBufferSize)
        var errorBuffer = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE))
        guard let handle = pcap_fopen_offline_with_tstamp_precision(file, UInt32(PCAP_TSTAMP_PRECISION_NANO), &errorBuffer) else {
            fclose(file)  // libpcap closes the file with its handle, but not when it refuses the file
            buffer.deallocate()
            let reason = errorBuffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            throw Failure(description: "cannot read '\(path)': \(reason)")
        }
        return OpenedFile(handle: handle, buffer: buffer)
    }
}

/// The step shared by files and live captures: one libpcap packet into the session, records out.
struct PacketFeed {
    let session: CaptureSession
    let link: LinkType
    private(set) var time: PacketTime
    private var records: [TapRecord] = []
    private(set) var last = Timestamp(nanoseconds: 0)

    init(session: CaptureSession, link: LinkType, nanosecondTimestamps: Bool) {
        self.session = session
        self.link = link
        self.time = PacketTime(nanosecondFraction: nanosecondTimestamps)
    }

    static func linkType(of handle: OpaquePointer, name: String) throws -> LinkType {
        let value = pcap_datalink(handle)
        guard let link = LinkType(rawValue: value) else {
            let linkName = pcap_datalink_val_to_name(value).map { String(cString: $0) } ?? "\(value)"
            throw PcapFile.Failure(description: "\(name): link type \(linkName) is not supported (Ethernet, loopback, Linux SLL/SLL2 and raw IP are)")
        }
        return link
    }

    mutating func packet(_ header: pcap_pkthdr, _ data: UnsafePointer<UInt8>, emit: ([TapRecord]) -> Void) {
        last = time.timestamp(of: header)
        let frame = UnsafeBufferPointer(start: data, count: Int(header.caplen))
        records.removeAll(keepingCapacity: true)
        session.packet(link: link, frame: frame, originalLength: Int(header.len), at: last, into: &records)
        if !records.isEmpty { emit(records) }
    }

    /// Ends every connection still open (their records say the capture ended).
    mutating func finish(emit: ([TapRecord]) -> Void) {
        records.removeAll()
        session.finish(at: last, into: &records)
        if !records.isEmpty { emit(records) }
    }
}
