import CPcap
import WSTapDissect

/// Reads a pcap or pcapng file through libpcap and feeds a `CaptureSession`.
public enum PcapFile {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Reads `path` to its end, handing records to `emit` as they are produced. A damaged file is read
    /// up to the damage; then this throws, and everything read before has been emitted.
    public static func read(path: String, session: CaptureSession, emit: ([TapRecord]) -> Void) throws {
        var errorBuffer = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE))
        guard let handle = pcap_open_offline(path, &errorBuffer) else {
            let reason = errorBuffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            throw Failure(description: "cannot read '\(path)': \(reason)")
        }
        defer { pcap_close(handle) }
        let linkValue = pcap_datalink(handle)
        guard let link = LinkType(rawValue: linkValue) else {
            throw Failure(description: "'\(path)': link type \(linkValue) is not supported (Ethernet, loopback, Linux SLL/SLL2 and raw IP are)")
        }
        var header: UnsafeMutablePointer<pcap_pkthdr>?
        var data: UnsafePointer<UInt8>?
        var records: [TapRecord] = []
        var last = Timestamp(nanoseconds: 0)
        let nanosecondFile = pcap_get_tstamp_precision(handle) == Int32(PCAP_TSTAMP_PRECISION_NANO)
        while true {
            let status = pcap_next_ex(handle, &header, &data)
            if status == 1, let header, let data {
                let h = header.pointee
                let fraction = Int64(h.ts.tv_usec) * (nanosecondFile ? 1 : 1000)
                last = Timestamp(nanoseconds: Int64(h.ts.tv_sec) * 1_000_000_000 + fraction)
                let frame = Array(UnsafeBufferPointer(start: data, count: Int(h.caplen)))
                records.removeAll(keepingCapacity: true)
                session.packet(link: link, frame: frame, originalLength: Int(h.len), at: last, into: &records)
                if !records.isEmpty { emit(records) }
            } else if status == -2 {
                break  // end of file
            } else {
                let reason = String(cString: pcap_geterr(handle))
                records.removeAll()
                session.finish(at: last, into: &records)
                emit(records)
                throw Failure(description: "'\(path)' is damaged after \(session.packets) packets: \(reason). Records up to there were written.")
            }
        }
        records.removeAll()
        session.finish(at: last, into: &records)
        if !records.isEmpty { emit(records) }
    }
}
