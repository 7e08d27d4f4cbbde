import CZlib

/// Raw deflate for one direction (RFC 7692 §7.2.1): the relay re-encodes a direction with it once an
/// edit has put the peers' windows out of step, and tests build compressed messages with it. A
/// message's output has the trailing `00 00 FF FF` removed, ready for a frame.
public final class Deflater {
    private let stream: UnsafeMutablePointer<z_stream>
    private let noContextTakeover: Bool

    public init(windowBits: Int = 15, noContextTakeover: Bool = false) {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        // zlib rejects raw deflate with 8 bits; 9 produces streams that any 8..15 inflater accepts.
        let code = wstap_deflateInit2(stream, Z_DEFAULT_COMPRESSION, -Int32(max(9, windowBits)), 8)
        precondition(code == Z_OK, "deflateInit2 failed: \(code)")
        self.noContextTakeover = noContextTakeover
    }

    deinit {
        deflateEnd(stream)
        stream.deinitialize(count: 1)
        stream.deallocate()
    }

    public func compressMessage(_ message: [UInt8]) -> [UInt8] { compress(message, final: true) }

    /// One piece of a message, flushed so the receiver can inflate everything sent so far. `final`
    /// ends the message: its `00 00 FF FF` is removed (the receiver adds it back, §7.2.2), and without
    /// context takeover the window starts afresh. A non-final piece keeps it: in the middle of a
    /// message it is an empty stored block, harmless to any inflater.
    public func compress(_ piece: [UInt8], final: Bool) -> [UInt8] {
        var result: [UInt8] = []
        var input = piece
        var out = [UInt8](repeating: 0, count: 16 * 1024)
        input.withUnsafeMutableBytes { inRaw in
            stream.pointee.next_in = inRaw.baseAddress?.assumingMemoryBound(to: Bytef.self)
            stream.pointee.avail_in = uInt(inRaw.count)
            repeat {
                out.withUnsafeMutableBytes { outRaw in
                    stream.pointee.next_out = outRaw.baseAddress!.assumingMemoryBound(to: Bytef.self)
                    stream.pointee.avail_out = uInt(outRaw.count)
                    _ = deflate(stream, Z_SYNC_FLUSH)
                    result.append(contentsOf: outRaw.prefix(outRaw.count - Int(stream.pointee.avail_out)))
                }
            } while stream.pointee.avail_out == 0
        }
        guard final else { return result }
        if result.suffix(4) == [0x00, 0x00, 0xFF, 0xFF] {
            result.removeLast(4)
        } else if result.isEmpty {
            // zlib writes nothing for a flush with nothing new since the last one, so the payload would
            // end on a whole block and the receiver's `00 00 FF FF` would not parse. One byte starting
            // an empty stored block lets the receiver's tail complete it (RFC 7692 §7.2.3.6).
            result = [0x00]
        }
        if noContextTakeover { deflateReset(stream) }
        return result
    }
}
