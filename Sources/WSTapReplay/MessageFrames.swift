import WSTapWire

/// A message as frames, for the replay client (masked) and the mock server (unmasked): compressed
/// if asked (RSV1 on the first frame), split like a recorded shape when one is given.
enum MessageFrames {
    /// - Parameters:
    ///   - shape: recorded frame payload sizes; kept when they add up to the wire size, else the
    ///     same count of frames of about equal size. Control messages are always one frame.
    ///   - mask: a fresh mask key per frame (a client), or nil (a server).
    static func encode(_ opcode: Opcode, _ payload: [UInt8], deflater: Deflater?, shape: [UInt64]?, mask: (() -> UInt32)?) -> [UInt8] {
        let wire = deflater.map { $0.compressMessage(payload) } ?? payload
        var sizes: [Int] = [wire.count]
        if let shape, shape.count > 1, !opcode.isControl {
            if shape.reduce(0, +) == UInt64(wire.count) {
                sizes = shape.map { Int($0) }
            } else {
                let count = shape.count, base = wire.count / count
                sizes = (0..<count).map { $0 < count - 1 ? base : wire.count - base * (count - 1) }
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(wire.count + 14 * sizes.count)
        var start = 0
        for (index, size) in sizes.enumerated() {
            let key = mask?()
            let header = FrameHeader(fin: index == sizes.count - 1, rsv1: deflater != nil && index == 0, opcode: index == 0 ? opcode : .continuation,
                                     maskKey: key, payloadLength: UInt64(size))
            header.encode(into: &out)
            let from = out.count
            out += wire[start..<(start + size)]
            if let key {
                out.withUnsafeMutableBytes { Masking.apply(key: key, offset: 0, to: UnsafeMutableRawBufferPointer(rebasing: $0[from...])) }
            }
            start += size
        }
        return out
    }
}
