/// One libFuzzer target: a name (the folder of its corpus and kept regressions) and the function that
/// runs one input. Each function must not crash, hang or grow memory without bound on any input, and
/// checks the invariants its parser promises (the same result however input is split, round trips),
/// trapping with `FuzzCheck.fail` when one breaks so libFuzzer keeps the input.
public struct FuzzTarget: Sendable {
    public let name: String
    /// What the input bytes mean, for docs/reliability.md and `wstap-fuzz list`.
    public let input: String
    /// Longest input the fuzzer makes (libFuzzer's -max_len): long enough for the structure the target
    /// reads, short enough to keep executions fast; seeds longer than this are cut.
    public let maxLength: Int
    public let run: @Sendable ([UInt8]) -> Void

    public init(name: String, input: String, maxLength: Int, run: @escaping @Sendable ([UInt8]) -> Void) {
        self.name = name
        self.input = input
        self.maxLength = maxLength
        self.run = run
    }

    public static let all: [FuzzTarget] = WireTargets.all + DissectTargets.all + CaptureTargets.all + RelayTargets.all + FilterTargets.all + RulesTargets.all
        + RecordingTargets.all + ReplayMockTargets.all + ControlTargets.all

    public static func named(_ name: String) -> FuzzTarget? { all.first { $0.name == name } }
}

/// Invariant checks that stop the process like a crash, so libFuzzer saves the input.
public enum FuzzCheck {
    public static func expect(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                              file: StaticString = #fileID, line: UInt = #line) {
        if !condition() { fail(message(), file: file, line: line) }
    }

    public static func fail(_ message: String, file: StaticString = #fileID, line: UInt = #line) -> Never {
        fatalError("invariant broken: \(message)", file: file, line: line)
    }
}

/// Reads structure out of fuzzer bytes: choices, lengths and pieces. Running out of bytes is not an
/// error: every read then returns zero or an empty piece, so every input means something.
public struct FuzzReader {
    private let bytes: [UInt8]
    public private(set) var index = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var isAtEnd: Bool { index >= bytes.count }
    public var remaining: Int { bytes.count - index }

    public mutating func byte() -> UInt8 {
        guard index < bytes.count else { return 0 }
        defer { index += 1 }
        return bytes[index]
    }

    public mutating func u16() -> Int { Int(byte()) << 8 | Int(byte()) }

    public mutating func u32() -> UInt32 { UInt32(byte()) << 24 | UInt32(byte()) << 16 | UInt32(byte()) << 8 | UInt32(byte()) }

    /// A choice among `count` options.
    public mutating func choice(_ count: Int) -> Int { Int(byte()) % max(1, count) }

    public mutating func bytes(_ count: Int) -> [UInt8] {
        let take = min(max(0, count), remaining)
        defer { index += take }
        return Array(bytes[index..<(index + take)])
    }

    public mutating func rest() -> [UInt8] { bytes(remaining) }

    /// A piece whose length (0…max) is given by the next byte or two.
    public mutating func piece(max: Int) -> [UInt8] {
        let length = max < 256 ? Int(byte()) % (max + 1) : u16() % (max + 1)
        return bytes(length)
    }
}

/// Cuts `bytes` into pieces whose sizes cycle through `sizes` (each at least 1): the same input fed in
/// different pieces must give the same result, which many targets check.
public func cut(_ bytes: [UInt8], sizes: [Int]) -> [[UInt8]] {
    var pieces: [[UInt8]] = []
    var index = 0
    var which = 0
    while index < bytes.count {
        let size = max(1, sizes.isEmpty ? bytes.count : sizes[which % sizes.count])
        pieces.append(Array(bytes[index..<min(bytes.count, index + size)]))
        index += size
        which += 1
    }
    return pieces
}

/// The same cut without copying: `body` gets each piece in place (the hot loops of the targets).
public func forEachPiece(_ bytes: [UInt8], sizes: [Int], _ body: (UnsafeRawBufferPointer) -> Void) {
    bytes.withUnsafeBytes { all in
        var index = 0
        var which = 0
        while index < all.count {
            let size = max(1, sizes.isEmpty ? all.count : sizes[which % sizes.count])
            body(UnsafeRawBufferPointer(rebasing: all[index..<min(all.count, index + size)]))
            index += size
            which += 1
        }
    }
}
