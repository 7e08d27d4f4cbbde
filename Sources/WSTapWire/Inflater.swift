/// A streaming raw-inflate context (RFC 1951) for one direction of permessage-deflate (RFC 7692 §7.2.2).
///
/// Written here rather than wrapping zlib because inflating is most of the work when reading a deflate
/// capture, and zlib's general state machine does about 300 MB/s on JSON-like WebSocket payloads. This one
/// decodes whole symbols from a 64-bit bit buffer through two-level lookup tables (one lookup yields two
/// literals where both codes are short), looks up the next symbol while a match is being copied, and copies
/// matches sixteen bytes at a time, which is where the speed comes from (the approach of libdeflate, which
/// cannot be used directly: it keeps no window between calls, and context takeover needs one).
///
/// Compressed payload is fed piece by piece as it arrives, split anywhere. A symbol or block header that
/// straddles two pieces is not half-decoded: the bytes it needs are kept (a few, or a few hundred for a
/// dynamic block header) and decoding resumes once they are complete. Output goes to a closure in chunks
/// and is never accumulated beyond the 32 KiB window a later message may refer back to. Every direction
/// inflates with a 32 KiB window: a stream made with a smaller one inflates the same, so
/// `*_max_window_bits` need not be known to decode correctly.
public final class Inflater {
    public enum Failure: Error, Equatable, Sendable {
        /// The data is not valid DEFLATE. The reason uses zlib's wording, which users may search for.
        case invalid(String)
    }

    private static let history = 32 * 1024
    private static let workArea = 64 * 1024
    /// Decoding stops to hand output over once it passes `history + workArea`; past that there must be
    /// room for one more match (258 bytes) plus the 15 bytes a sixteen-byte copy may run over.
    private static let capacity = history + workArea + 258 + 16

    private enum State {
        case blockHeader
        case stored(remaining: Int)
        case huffman
        /// A block with BFINAL ended the stream; more input starts a new one (RFC 7692 §7.2.3.4).
        case streamEnded
    }

    private let window: UnsafeMutablePointer<UInt8>
    private var position = 0
    private var flushed = 0
    /// Unconsumed bits, least significant first; fewer than 8 between calls, the rest are in `pending`.
    private var bitBuffer: UInt64 = 0
    private var bitCount = 0
    /// Input not yet consumed: the tail of a symbol or block header that a piece boundary cut.
    private var pending: [UInt8] = []
    private var state = State.blockHeader
    private var finalBlock = false
    private var failure: String?
    private let dynamicLiterals: UnsafeMutablePointer<UInt32>
    private let dynamicDistances: UnsafeMutablePointer<UInt32>
    private var literals: UnsafePointer<UInt32>
    private var distances: UnsafePointer<UInt32>

    public init() {
        window = .allocate(capacity: Self.capacity)
        dynamicLiterals = .allocate(capacity: HuffmanTable.literalCapacity)
        dynamicDistances = .allocate(capacity: HuffmanTable.distanceCapacity)
        literals = UnsafePointer(FixedHuffmanTables.shared.literals)
        distances = UnsafePointer(FixedHuffmanTables.shared.distances)
    }

    deinit {
        window.deallocate()
        dynamicLiterals.deallocate()
        dynamicDistances.deallocate()
    }

    /// Inflates a piece of a compressed message. `sink` receives output chunks (valid only during the call).
    /// After a failure every call fails until `reset()`.
    public func inflate(_ input: UnsafeRawBufferPointer, sink: (UnsafeRawBufferPointer) -> Void) throws {
        if let failure { throw Failure.invalid(failure) }
        guard let base = input.baseAddress, input.count > 0 else { return }
        if historyIsCold { warmHistory() }
        if pending.isEmpty {
            let used = try run(base.assumingMemoryBound(to: UInt8.self), input.count, sink)
            if used < input.count { pending.append(contentsOf: input[used...]) }
        } else {
            pending.append(contentsOf: input)
            var remaining = pending
            pending = []
            let used = try remaining.withUnsafeBufferPointer { try run($0.baseAddress!, $0.count, sink) }
            remaining.removeFirst(used)
            pending = remaining
        }
    }

    /// Ends a message: feeds the `00 00 FF FF` that the sender stripped (§7.2.2) and, for no context
    /// takeover, resets the window so the next message starts fresh.
    public func finishMessage(resetContext: Bool, sink: (UnsafeRawBufferPointer) -> Void) throws {
        try Self.tail.withUnsafeBytes { raw in try inflate(raw, sink: sink) }
        if resetContext { reset() }
        historyIsCold = true
    }

    /// Set between messages. A capture interleaves many connections, so by the time this direction's
    /// next message arrives its history has usually left the CPU's caches; the matches of that message
    /// then stall one by one on far-back bytes. Reading the history in one pass first costs far less
    /// (the reads overlap), which made inflating 24 interleaved streams about 13% faster.
    private var historyIsCold = false
    private var warmed: UInt8 = 0

    /// Reads one byte of every 64-byte cache line of the history.
    private func warmHistory() {
        historyIsCold = false
        var sum: UInt8 = 0
        var line = max(0, position - Self.history)
        while line < position {
            sum &+= window[line]
            line += 64
        }
        warmed = sum  // kept, so the reads are not optimised away
    }

    private static let tail: [UInt8] = [0x00, 0x00, 0xFF, 0xFF]

    /// After `finishMessage`: the message left the stream between blocks, as RFC 7692 §7.2.1 asks (its
    /// sender flushed). A message that did not leaves the stream inside a block, where only its own
    /// sender's next bytes can go on: a compressor starting afresh cannot follow it.
    public var endsOnBlockBoundary: Bool {
        switch state {
        case .blockHeader, .streamEnded: pending.isEmpty
        case .stored, .huffman: false
        }
    }

    /// Drops all context, e.g. after an error, so later messages without back-references can decode.
    public func reset() {
        position = 0
        flushed = 0
        bitBuffer = 0
        bitCount = 0
        pending.removeAll(keepingCapacity: true)
        state = .blockHeader
        failure = nil
    }

    // MARK: Decoding

    /// Decodes as far as the input allows; returns how many input bytes were consumed. Bits of a
    /// partly consumed byte stay in `bitBuffer`; whole bytes not consumed are left to the caller.
    private func run(_ start: UnsafePointer<UInt8>, _ count: Int, _ sink: (UnsafeRawBufferPointer) -> Void) throws -> Int {
        var ip = start
        let end = start + count
        var b = bitBuffer
        var n = bitCount
        var op = position
        let out = window
        let limit = Self.history + Self.workArea
        var error: String?

        decoding: while true {
            switch state {
            case .streamEnded:
                guard ip < end || n >= 8 else { break decoding }
                // A new stream starts with an empty window, as zlib's inflateReset leaves it.
                op = emit(op, sink)
                op = 0
                flushed = 0
                state = .blockHeader

            case .blockHeader:
                var cursor = BitCursor(ip: ip, end: end, bits: b, count: n)
                switch parseBlockHeader(&cursor) {
                case .needInput: break decoding
                case .invalid(let reason): error = reason; break decoding
                case .parsed: (ip, b, n) = (cursor.ip, cursor.bits, cursor.count)
                }

            case .stored(var remaining):
                // The header left the input byte-aligned with nothing in the bit buffer.
                while remaining > 0 {
                    if op > limit { op = slide(op, sink) }
                    let take = min(remaining, end - ip, Self.capacity - op)
                    if take == 0 { break }
                    (out + op).update(from: ip, count: take)
                    op += take
                    ip += take
                    remaining -= take
                }
                if remaining > 0 {
                    state = .stored(remaining: remaining)
                    break decoding
                }
                state = finalBlock ? .streamEnded : .blockHeader

            case .huffman:
                let literalTable = literals
                let distanceTable = distances
                // Fast loop, while at least 16 input bytes remain: a refill then leaves 56 or more bits, which
                // covers the longest length code with its extra bits plus the longest distance code with its
                // extra bits (48 bits), so no symbol here checks for bits. The next symbol's table entry is
                // looked up before the current match is copied, so that load overlaps the copy. End of block,
                // invalid codes and the last bytes of input go to the careful loop below, symbol unconsumed.
                if end - ip >= 16 {
                    b |= UInt64(littleEndian: UnsafeRawPointer(ip).loadUnaligned(as: UInt64.self)) &<< UInt64(n)
                    ip += (63 - n) >> 3
                    n |= 56
                    var entry = literalTable[Int(truncatingIfNeeded: b) & HuffmanTable.literalMask]
                    fast: while true {
                        if op > limit { op = slide(op, sink) }
                        if entry & HuffmanTable.kindMask == HuffmanTable.link {
                            entry = literalTable[HuffmanTable.subtableIndex(entry, b &>> UInt64(HuffmanTable.literalBits))]
                        }
                        let kind = entry & HuffmanTable.kindMask
                        if kind == HuffmanTable.literal {
                            // Up to three literal entries from one refill: 15 + 10 + 10 bits, and 10 more for the
                            // lookahead (only the first can come from a subtable).
                            var taken = 0
                            repeat {
                                b &>>= UInt64(entry & 0xF)
                                n -= Int(entry & 0xF)
                                UnsafeMutableRawPointer(out + op).storeBytes(of: UInt16(truncatingIfNeeded: entry >> 16), as: UInt16.self)
                                op += Int((entry >> 8) & 0xF)
                                entry = literalTable[Int(truncatingIfNeeded: b) & HuffmanTable.literalMask]
                                taken += 1
                            } while taken < 3 && entry & HuffmanTable.kindMask == HuffmanTable.literal
                        } else if kind == HuffmanTable.lengthOrDistance {
                            let codeLength = entry & 0xF
                            let lengthExtra = (entry >> 8) & 0xF
                            let length = Int(entry >> 16) + (Int(truncatingIfNeeded: b &>> UInt64(codeLength)) & ((1 << Int(lengthExtra)) - 1))
                            b &>>= UInt64(codeLength + lengthExtra)
                            n -= Int(codeLength + lengthExtra)
                            var distanceEntry = distanceTable[Int(truncatingIfNeeded: b) & HuffmanTable.distanceMask]
                            if distanceEntry & HuffmanTable.kindMask == HuffmanTable.link {
                                distanceEntry = distanceTable[HuffmanTable.subtableIndex(distanceEntry, b &>> UInt64(HuffmanTable.distanceBits))]
                            }
                            guard distanceEntry & HuffmanTable.kindMask == HuffmanTable.lengthOrDistance else {
                                error = "invalid distance code"
                                break decoding
                            }
                            let distanceLength = distanceEntry & 0xF
                            let distanceExtra = (distanceEntry >> 8) & 0xF
                            let distance = Int(distanceEntry >> 16)
                                + (Int(truncatingIfNeeded: b &>> UInt64(distanceLength)) & ((1 << Int(distanceExtra)) - 1))
                            b &>>= UInt64(distanceLength + distanceExtra)
                            n -= Int(distanceLength + distanceExtra)
                            guard distance <= op else {
                                error = "invalid distance too far back"
                                break decoding
                            }
                            // The top refill advanced at most 7 bytes, so 8 more can be loaded here.
                            b |= UInt64(littleEndian: UnsafeRawPointer(ip).loadUnaligned(as: UInt64.self)) &<< UInt64(n)
                            ip += (63 - n) >> 3
                            n |= 56
                            entry = literalTable[Int(truncatingIfNeeded: b) & HuffmanTable.literalMask]
                            copyMatch(out + op, distance: distance, length: length)
                            op += length
                        } else {
                            break fast
                        }
                        guard end - ip >= 16 else { break fast }
                        b |= UInt64(littleEndian: UnsafeRawPointer(ip).loadUnaligned(as: UInt64.self)) &<< UInt64(n)
                        ip += (63 - n) >> 3
                        n |= 56
                    }
                }
                symbols: while true {
                    if op > limit { op = slide(op, sink) }
                    if end - ip >= 8 {
                        // Branch-free refill: bits of a byte only partly loaded are reloaded identically next time.
                        b |= UInt64(littleEndian: UnsafeRawPointer(ip).loadUnaligned(as: UInt64.self)) &<< UInt64(n)
                        ip += (63 - n) >> 3
                        n |= 56
                    } else {
                        while n <= 56 && ip < end {
                            b |= UInt64(ip.pointee) &<< UInt64(n)
                            ip += 1
                            n += 8
                        }
                    }
                    var entry = literalTable[Int(truncatingIfNeeded: b) & HuffmanTable.literalMask]
                    if entry & HuffmanTable.kindMask == HuffmanTable.link {
                        entry = literalTable[HuffmanTable.subtableIndex(entry, b &>> UInt64(HuffmanTable.literalBits))]
                    }
                    let codeLength = Int(entry & 0xF)
                    let kind = entry & HuffmanTable.kindMask
                    if kind == HuffmanTable.literal {
                        if codeLength > n {
                            // A pair whose second code has not fully arrived: the first literal alone may
                            // have. Nothing decodable may be held back, or the output of a message cut
                            // short would depend on where its input was split.
                            let firstLength = Int((entry >> 4) & 0xF)
                            guard (entry >> 8) & 0xF == 2 && firstLength <= n else { break decoding }
                            b &>>= UInt64(firstLength)
                            n -= firstLength
                            out[op] = UInt8(truncatingIfNeeded: entry >> 16)
                            op += 1
                            continue symbols
                        }
                        b &>>= UInt64(codeLength)
                        n -= codeLength
                        UnsafeMutableRawPointer(out + op).storeBytes(of: UInt16(truncatingIfNeeded: entry >> 16), as: UInt16.self)
                        op += Int((entry >> 8) & 0xF)
                        // Literals come in runs: decode up to two more from the bits already loaded
                        // (the slack past `limit` has room for them).
                        for _ in 0..<2 {
                            entry = literalTable[Int(truncatingIfNeeded: b) & HuffmanTable.literalMask]
                            guard entry & HuffmanTable.kindMask == HuffmanTable.literal && Int(entry & 0xF) <= n else { break }
                            b &>>= UInt64(entry & 0xF)
                            n -= Int(entry & 0xF)
                            UnsafeMutableRawPointer(out + op).storeBytes(of: UInt16(truncatingIfNeeded: entry >> 16), as: UInt16.self)
                            op += Int((entry >> 8) & 0xF)
                        }
                        continue symbols
                    }
                    if kind == HuffmanTable.lengthOrDistance {
                        let lengthExtra = Int((entry >> 8) & 0xF)
                        var used = codeLength + lengthExtra
                        guard used <= n else { break decoding }
                        let length = Int(entry >> 16) + (Int(truncatingIfNeeded: b &>> UInt64(codeLength)) & ((1 << lengthExtra) - 1))
                        let rest = b &>> UInt64(used)
                        var distanceEntry = distanceTable[Int(truncatingIfNeeded: rest) & HuffmanTable.distanceMask]
                        if distanceEntry & HuffmanTable.kindMask == HuffmanTable.link {
                            distanceEntry = distanceTable[HuffmanTable.subtableIndex(distanceEntry, rest &>> UInt64(HuffmanTable.distanceBits))]
                        }
                        let distanceLength = Int(distanceEntry & 0xF)
                        guard used + distanceLength <= n else { break decoding }
                        guard distanceEntry & HuffmanTable.kindMask == HuffmanTable.lengthOrDistance else {
                            error = "invalid distance code"
                            break decoding
                        }
                        let distanceExtra = Int((distanceEntry >> 8) & 0xF)
                        guard used + distanceLength + distanceExtra <= n else { break decoding }
                        let distance = Int(distanceEntry >> 16)
                            + (Int(truncatingIfNeeded: rest &>> UInt64(distanceLength)) & ((1 << distanceExtra) - 1))
                        used += distanceLength + distanceExtra
                        guard distance <= op else {
                            error = "invalid distance too far back"
                            break decoding
                        }
                        b &>>= UInt64(used)
                        n -= used
                        copyMatch(out + op, distance: distance, length: length)
                        op += length
                        continue symbols
                    }
                    guard codeLength <= n else { break decoding }
                    guard kind == HuffmanTable.endOfBlock else {
                        error = "invalid literal/length code"
                        break decoding
                    }
                    b &>>= UInt64(codeLength)
                    n -= codeLength
                    state = finalBlock ? .streamEnded : .blockHeader
                    break symbols
                }
            }
            if case .streamEnded = state {
                // The rest of the byte holding the final block's end is padding.
                b &>>= UInt64(n & 7)
                n -= n & 7
            }
        }

        // Hand back whole bytes the bit buffer read ahead: they belong to the next call.
        ip -= n >> 3
        n &= 7
        b &= (1 << UInt64(n)) - 1
        bitBuffer = b
        bitCount = n
        position = emit(op, sink)
        if let error {
            failure = error
            throw Failure.invalid(error)
        }
        return ip - start
    }

    /// Hands output not yet delivered to the sink.
    private func emit(_ op: Int, _ sink: (UnsafeRawBufferPointer) -> Void) -> Int {
        if op > flushed { sink(UnsafeRawBufferPointer(start: window + flushed, count: op - flushed)) }
        flushed = op
        return op
    }

    /// Delivers output and moves the last 32 KiB to the front, where later matches can still reach it.
    @inline(never)
    private func slide(_ op: Int, _ sink: (UnsafeRawBufferPointer) -> Void) -> Int {
        _ = emit(op, sink)
        UnsafeMutableRawPointer(window).copyMemory(from: window + (op - Self.history), byteCount: Self.history)
        flushed = Self.history
        return Self.history
    }

    @inline(__always)
    private func copyMatch(_ destination: UnsafeMutablePointer<UInt8>, distance: Int, length: Int) {
        var to = destination
        var from = destination - distance
        let stop = destination + length
        if distance >= 16 {
            // Each load reads only bytes already written; the copy may run up to 15 bytes past `stop`,
            // into space the next symbols overwrite.
            repeat {
                UnsafeMutableRawPointer(to).storeBytes(of: UnsafeRawPointer(from).loadUnaligned(as: SIMD16<UInt8>.self), as: SIMD16<UInt8>.self)
                to += 16
                from += 16
            } while to < stop
        } else if distance >= 8 {
            repeat {
                UnsafeMutableRawPointer(to).storeBytes(of: UnsafeRawPointer(from).loadUnaligned(as: UInt64.self), as: UInt64.self)
                to += 8
                from += 8
            } while to < stop
        } else if distance == 1 {
            to.update(repeating: from.pointee, count: length)
        } else {
            repeat {
                to.pointee = from.pointee
                to += 1
                from += 1
            } while to < stop
        }
    }

    private enum HeaderResult {
        case parsed
        case needInput
        case invalid(String)
    }

    /// Reads a block header (and for a dynamic block, its code tables). Nothing is consumed unless the
    /// whole header is present, so a header cut by a piece boundary is simply read again later.
    private func parseBlockHeader(_ cursor: inout BitCursor) -> HeaderResult {
        guard cursor.ensure(3) else { return .needInput }
        let isFinal = cursor.take(1) == 1
        switch cursor.take(2) {
        case 0:
            cursor.skipToByteBoundary()
            guard cursor.ensure(32) else { return .needInput }
            let length = cursor.take(16)
            let complement = cursor.take(16)
            guard length == ~complement & 0xFFFF else { return .invalid("invalid stored block lengths") }
            cursor.returnWholeBytes()
            state = .stored(remaining: length)
        case 1:
            literals = UnsafePointer(FixedHuffmanTables.shared.literals)
            distances = UnsafePointer(FixedHuffmanTables.shared.distances)
            state = .huffman
        case 2:
            if let result = parseDynamicTables(&cursor) { return result }
            literals = UnsafePointer(dynamicLiterals)
            distances = UnsafePointer(dynamicDistances)
            state = .huffman
        default:
            return .invalid("invalid block type")
        }
        finalBlock = isFinal
        return .parsed
    }

    /// RFC 1951 §3.2.7. Returns nil when the tables were built.
    private func parseDynamicTables(_ cursor: inout BitCursor) -> HeaderResult? {
        guard cursor.ensure(14) else { return .needInput }
        let literalCount = cursor.take(5) + 257
        let distanceCount = cursor.take(5) + 1
        let precodeCount = cursor.take(4) + 4
        guard literalCount <= 286 && distanceCount <= 30 else { return .invalid("too many length or distance symbols") }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 320) { lengths -> HeaderResult? in
            lengths.initialize(repeating: 0)
            for index in 0..<precodeCount {
                guard cursor.ensure(3) else { return .needInput }
                lengths[HuffmanTable.precodeOrder[index]] = UInt8(cursor.take(3))
            }
            return withUnsafeTemporaryAllocation(of: UInt32.self, capacity: HuffmanTable.precodeCapacity) { precode -> HeaderResult? in
                guard HuffmanTable.build(lengths: UnsafePointer(lengths.baseAddress!), count: 19, kind: .precode, into: precode.baseAddress!) else {
                    return .invalid("invalid code lengths set")
                }
                let total = literalCount + distanceCount
                var index = 0
                while index < total {
                    _ = cursor.ensure(14)
                    let entry = precode[Int(truncatingIfNeeded: cursor.bits) & ((1 << HuffmanTable.precodeBits) - 1)]
                    let codeLength = Int(entry & 0xF)
                    guard codeLength <= cursor.count else { return .needInput }
                    guard entry & HuffmanTable.kindMask == HuffmanTable.literal else { return .invalid("invalid code lengths set") }
                    let symbol = Int(entry >> 16)
                    if symbol < 16 {
                        _ = cursor.take(codeLength)
                        lengths[index] = UInt8(symbol)
                        index += 1
                        continue
                    }
                    let (extraBits, base) = symbol == 16 ? (2, 3) : symbol == 17 ? (3, 3) : (7, 11)
                    guard codeLength + extraBits <= cursor.count else { return .needInput }
                    _ = cursor.take(codeLength)
                    let repeatCount = base + cursor.take(extraBits)
                    guard symbol != 16 || index > 0, index + repeatCount <= total else { return .invalid("invalid bit length repeat") }
                    let value = symbol == 16 ? lengths[index - 1] : 0
                    for offset in 0..<repeatCount { lengths[index + offset] = value }
                    index += repeatCount
                }
                guard lengths[256] != 0 else { return .invalid("invalid code -- missing end-of-block") }
                guard HuffmanTable.build(lengths: UnsafePointer(lengths.baseAddress!), count: literalCount, kind: .literalLength, into: dynamicLiterals) else {
                    return .invalid("invalid literal/lengths set")
                }
                guard HuffmanTable.build(lengths: UnsafePointer(lengths.baseAddress! + literalCount), count: distanceCount, kind: .distance, into: dynamicDistances) else {
                    return .invalid("invalid distances set")
                }
                return nil
            }
        }
    }
}

/// Bit reader for block headers: checks for the end of input at every step, unlike the symbol loop.
private struct BitCursor {
    var ip: UnsafePointer<UInt8>
    let end: UnsafePointer<UInt8>
    var bits: UInt64
    var count: Int

    /// Loads bytes until `needed` bits are there (at most 56); false if the input ran out first.
    mutating func ensure(_ needed: Int) -> Bool {
        while count < needed {
            guard ip < end else { return false }
            bits |= UInt64(ip.pointee) &<< UInt64(count)
            ip += 1
            count += 8
        }
        return true
    }

    mutating func take(_ width: Int) -> Int {
        let value = Int(truncatingIfNeeded: bits) & ((1 << width) - 1)
        bits &>>= UInt64(width)
        count -= width
        return value
    }

    mutating func skipToByteBoundary() {
        _ = take(count & 7)
    }

    /// Gives whole bytes held in the bit buffer back to the input (stored blocks copy from the input).
    mutating func returnWholeBytes() {
        ip -= count >> 3
        bits = 0
        count = 0
    }
}

/// Decode tables for canonical Huffman codes (RFC 1951 §3.2.2). An entry is a `UInt32`:
/// bits 0–3 the code length to consume, 4–7 in a literal pair the first literal's code length, 8–11
/// the extra bits of a length or distance (or the width of a subtable, or how many literals a
/// literal/length entry holds), 12–15 the kind, 16–31 the literal (two literals: bits 16–23 then
/// 24–31), base value or subtable offset. Codes longer than the root width go
/// through a subtable; its entries carry the full code length. A literal/length root entry whose literal
/// code leaves room for the whole code of a second literal holds both, so runs of short literals (digits,
/// punctuation) take half the lookups.
enum HuffmanTable {
    enum Kind { case literalLength, distance, precode }

    static let literalBits = 10
    static let distanceBits = 8
    static let precodeBits = 7
    static let literalMask = (1 << literalBits) - 1
    static let distanceMask = (1 << distanceBits) - 1
    // Roots plus room for subtables; zlib's `enough` bounds a valid code's subtables well below this.
    static let literalCapacity = (1 << literalBits) + 1024
    static let distanceCapacity = (1 << distanceBits) + 1024
    static let precodeCapacity = 1 << precodeBits

    static let kindMask: UInt32 = 0xF000
    static let literal: UInt32 = 0x0000
    static let lengthOrDistance: UInt32 = 0x1000
    static let endOfBlock: UInt32 = 0x2000
    static let link: UInt32 = 0x3000
    static let invalid: UInt32 = 0x4000

    static let precodeOrder = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]
    static let lengthBase: [UInt32] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258]
    static let lengthExtra: [UInt32] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
    static let distanceBase: [UInt32] = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
    static let distanceExtra: [UInt32] = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13]

    @inline(__always)
    static func subtableIndex(_ link: UInt32, _ following: UInt64) -> Int {
        Int(link >> 16) + (Int(truncatingIfNeeded: following) & ((1 << Int((link >> 8) & 0xF)) - 1))
    }

    private static func entry(for symbol: Int, kind: Kind) -> UInt32 {
        switch kind {
        case .precode:
            return UInt32(symbol) << 16 | literal
        case .literalLength:
            if symbol < 256 { return UInt32(symbol) << 16 | 1 << 8 | literal }
            if symbol == 256 { return endOfBlock }
            if symbol <= 285 { return lengthBase[symbol - 257] << 16 | lengthExtra[symbol - 257] << 8 | lengthOrDistance }
            return invalid
        case .distance:
            if symbol < 30 { return distanceBase[symbol] << 16 | distanceExtra[symbol] << 8 | lengthOrDistance }
            return invalid
        }
    }

    /// Fills `table` for the code lengths given; false if they do not form a code zlib would accept
    /// (over-subscribed, or incomplete other than a single one-bit code).
    static func build(lengths: UnsafePointer<UInt8>, count: Int, kind: Kind, into table: UnsafeMutablePointer<UInt32>) -> Bool {
        let rootBits: Int
        let capacity: Int
        switch kind {
        case .literalLength: (rootBits, capacity) = (literalBits, literalCapacity)
        case .distance: (rootBits, capacity) = (distanceBits, distanceCapacity)
        case .precode: (rootBits, capacity) = (precodeBits, precodeCapacity)
        }
        let rootSize = 1 << rootBits
        return withUnsafeTemporaryAllocation(of: Int.self, capacity: 16) { counts -> Bool in
            counts.initialize(repeating: 0)
            var longest = 0
            for symbol in 0..<count where lengths[symbol] > 0 {
                counts[Int(lengths[symbol])] += 1
                longest = max(longest, Int(lengths[symbol]))
            }
            var left = 1
            for length in 1..<16 {
                left = (left << 1) - counts[length]
                if left < 0 { return false }
            }
            if left > 0 && (kind == .precode || longest != 1) && longest != 0 { return false }
            if longest == 0 && kind == .precode {
                // zlib reads a code-length code without any codes as one-bit zero lengths, so the block
                // fails later ("missing end-of-block") or waits for input; doing the same keeps our
                // diagnostics identical to those of every zlib-based tool.
                table.update(repeating: literal | 1, count: rootSize)
                return true
            }
            // Patterns no code covers (no codes at all, or the one-bit code's other half) are invalid.
            // A complete code covers every root entry below, so most tables skip this fill.
            if left > 0 { table.update(repeating: invalid | (longest == 0 ? 0 : 1), count: rootSize) }
            if longest == 0 { return true }

            return withUnsafeTemporaryAllocation(of: Int.self, capacity: 16) { next -> Bool in
                var code = 0
                next[0] = 0
                for length in 1..<16 {
                    code = (code + (length > 1 ? counts[length - 1] : 0)) << 1
                    next[length] = code
                }
                return withUnsafeTemporaryAllocation(of: Int.self, capacity: count) { reversed -> Bool in
                    for symbol in 0..<count {
                        let length = Int(lengths[symbol])
                        guard length > 0 else { reversed[symbol] = 0; continue }
                        reversed[symbol] = reverse(next[length], length)
                        next[length] += 1
                    }
                    if longest > rootBits {
                        // Size each subtable for the longest code below its root pattern.
                        let fits = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: rootSize) { widest -> Bool in
                            widest.initialize(repeating: 0)
                            for symbol in 0..<count where Int(lengths[symbol]) > rootBits {
                                let root = reversed[symbol] & (rootSize - 1)
                                widest[root] = max(widest[root], lengths[symbol])
                            }
                            var offset = rootSize
                            for root in 0..<rootSize where widest[root] > 0 {
                                let width = Int(widest[root]) - rootBits
                                guard offset + (1 << width) <= capacity else { return false }
                                table[root] = UInt32(offset) << 16 | UInt32(width) << 8 | link | UInt32(rootBits)
                                offset += 1 << width
                            }
                            return true
                        }
                        guard fits else { return false }
                    }
                    for symbol in 0..<count {
                        let length = Int(lengths[symbol])
                        guard length > 0 else { continue }
                        let value = entry(for: symbol, kind: kind) | UInt32(length)
                        if length <= rootBits {
                            var index = reversed[symbol]
                            while index < rootSize {
                                table[index] = value
                                index += 1 << length
                            }
                        } else {
                            let linkEntry = table[reversed[symbol] & (rootSize - 1)]
                            let offset = Int(linkEntry >> 16)
                            let width = Int((linkEntry >> 8) & 0xF)
                            var index = reversed[symbol] >> rootBits
                            while index < 1 << width {
                                table[offset + index] = value
                                index += 1 << (length - rootBits)
                            }
                        }
                    }
                    if kind == .literalLength { pairLiterals(table, rootBits: rootBits) }
                    return true
                }
            }
        }
    }

    /// Where a root entry's literal leaves room for a second literal's whole code, the entry decodes both.
    /// Runs from the last index down: the second lookup reads a lower index, so it still holds one literal.
    private static func pairLiterals(_ table: UnsafeMutablePointer<UInt32>, rootBits: Int) {
        var index = (1 << rootBits) - 1
        while index >= 0 {
            let first = table[index]
            let firstLength = Int(first & 0xF)
            if first & kindMask == literal && firstLength < rootBits {
                let second = table[index >> firstLength]
                let secondLength = Int(second & 0xF)
                if second & kindMask == literal && (second >> 8) & 0xF == 1 && firstLength + secondLength <= rootBits {
                    table[index] = (first & 0x00FF_0000) | (second & 0x00FF_0000) << 8 | 2 << 8 | literal
                        | UInt32(firstLength) << 4 | UInt32(firstLength + secondLength)
                }
            }
            index -= 1
        }
    }

    /// The low `length` bits of `code` in reverse order (Huffman codes are packed from their first bit).
    private static func reverse(_ code: Int, _ length: Int) -> Int {
        var bits = UInt16(truncatingIfNeeded: code)
        bits = (bits & 0x5555) << 1 | (bits >> 1) & 0x5555
        bits = (bits & 0x3333) << 2 | (bits >> 2) & 0x3333
        bits = (bits & 0x0F0F) << 4 | (bits >> 4) & 0x0F0F
        return Int(bits.byteSwapped) >> (16 - length)
    }
}

/// The fixed codes of RFC 1951 §3.2.6, built once.
private final class FixedHuffmanTables: @unchecked Sendable {
    static let shared = FixedHuffmanTables()
    let literals = UnsafeMutablePointer<UInt32>.allocate(capacity: HuffmanTable.literalCapacity)
    let distances = UnsafeMutablePointer<UInt32>.allocate(capacity: HuffmanTable.distanceCapacity)

    private init() {
        var lengths = [UInt8](repeating: 8, count: 288)
        for symbol in 144..<256 { lengths[symbol] = 9 }
        for symbol in 256..<280 { lengths[symbol] = 7 }
        let distanceLengths = [UInt8](repeating: 5, count: 32)
        let built = HuffmanTable.build(lengths: lengths, count: 288, kind: .literalLength, into: literals)
            && HuffmanTable.build(lengths: distanceLengths, count: 32, kind: .distance, into: distances)
        precondition(built, "the fixed Huffman codes are complete")
    }
}
