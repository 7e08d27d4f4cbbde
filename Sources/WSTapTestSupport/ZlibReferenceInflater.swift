import CZlib

/// The zlib-backed inflater wstap used before its own (the same wrapper), kept as the oracle.
public final class ZlibReferenceInflater {
    public enum Failure: Error, Equatable, Sendable {
        case zlib(code: Int32, message: String)
    }

    private let stream: UnsafeMutablePointer<z_stream>
    private var output: [UInt8]
    private static let tail: [UInt8] = [0x00, 0x00, 0xFF, 0xFF]

    public init(chunkSize: Int = 32 * 1024) {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        // A failure here means zlib cannot allocate a few KB: not a traffic problem, so it is fatal.
        let code = wstap_inflateInit2(stream, -15)
        precondition(code == Z_OK, "inflateInit2 failed: \(code)")
        output = [UInt8](repeating: 0, count: chunkSize)
    }

    deinit {
        inflateEnd(stream)
        stream.deinitialize(count: 1)
        stream.deallocate()
    }

    /// Inflates a piece of a compressed message. `sink` receives output chunks (valid only during the call).
    public func inflate(_ input: UnsafeRawBufferPointer, sink: (UnsafeRawBufferPointer) -> Void) throws {
        guard let base = input.baseAddress, input.count > 0 else { return }
        stream.pointee.next_in = UnsafeMutablePointer(mutating: base.assumingMemoryBound(to: Bytef.self))
        stream.pointee.avail_in = uInt(input.count)
        try drain(sink: sink)
    }

    /// Ends a message: feeds the `00 00 FF FF` that the sender stripped (§7.2.2) and, for no context
    /// takeover, resets the window so the next message starts fresh.
    public func finishMessage(resetContext: Bool, sink: (UnsafeRawBufferPointer) -> Void) throws {
        try Self.tail.withUnsafeBytes { raw in try inflate(raw, sink: sink) }
        if resetContext { reset() }
    }

    /// Drops all context, e.g. after an error, so later messages without back-references can decode.
    public func reset() {
        inflateReset(stream)
    }

    private func drain(sink: (UnsafeRawBufferPointer) -> Void) throws {
        let chunk = output.count
        try output.withUnsafeMutableBytes { out in
            let outBase = out.baseAddress!.assumingMemoryBound(to: Bytef.self)
            while true {
                stream.pointee.next_out = outBase
                stream.pointee.avail_out = uInt(chunk)
                let code = CZlib.inflate(stream, Z_SYNC_FLUSH)
                let produced = chunk - Int(stream.pointee.avail_out)
                if produced > 0 { sink(UnsafeRawBufferPointer(start: outBase, count: produced)) }
                switch code {
                case Z_OK, Z_BUF_ERROR:
                    // Z_BUF_ERROR only means "no progress possible": all input used and output drained.
                    if stream.pointee.avail_in == 0 && stream.pointee.avail_out != 0 { return }
                    if code == Z_BUF_ERROR && produced == 0 { return }
                case Z_STREAM_END:
                    // A BFINAL block ended the stream (§7.2.3.4 allows it); the next message starts a new one.
                    let leftover = stream.pointee.avail_in
                    let next = stream.pointee.next_in
                    inflateReset(stream)
                    if leftover == 0 { return }
                    stream.pointee.next_in = next
                    stream.pointee.avail_in = leftover
                default:
                    let message = stream.pointee.msg.map { String(cString: $0) } ?? "zlib error \(code)"
                    throw Failure.zlib(code: code, message: message)
                }
            }
        }
    }
}
