import Synchronization
import WSTapDissect

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where records go. Sinks are called from every event loop, so they must be thread-safe, and they are
/// called with each batch as it happens: a sink writes it out before returning, so `tail -f` sees it
/// and a killed process loses nothing it has shown.
public protocol RecordSink: Sendable {
    func write(_ records: [TapRecord])
}

/// A file descriptor written with plain write(2) under a lock: no user-space buffer to lose.
public final class OutputFile: Sendable {
    private let fd: Mutex<Int32>
    public let path: String

    public static let standardOutput = OutputFile(fd: 1, path: "-")
    public static let standardError = OutputFile(fd: 2, path: "stderr")

    private init(fd: Int32, path: String) {
        self.fd = Mutex(fd)
        self.path = path
    }

    public struct OpenError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Opens (creating or appending to) a file; "-" means standard output.
    public static func open(path: String, append: Bool = false) throws -> OutputFile {
        if path == "-" { return .standardOutput }
        // O_APPEND even when truncating at open: if someone truncates the file later (logrotate's
        // copytruncate, a benchmark), writes continue at the new end instead of leaving a hole.
        let flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_APPEND | (append ? 0 : O_TRUNC)
        let fd = Glibc.open(path, flags, 0o644)
        guard fd >= 0 else {
            throw OpenError(description: "cannot open '\(path)' for writing: \(String(cString: strerror(errno)))")
        }
        return OutputFile(fd: fd, path: path)
    }

    public var isTerminal: Bool { fd.withLock { isatty($0) == 1 } }

    public func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { write($0) }
    }

    public func write(_ raw: UnsafeRawBufferPointer) {
        fd.withLock { fd in
            do {
                var offset = 0
                while offset < raw.count {
                    let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                    if n < 0 {
                        if errno == EINTR || errno == EAGAIN { continue }
                        return  // a closed pipe or full disk must not take the relay down
                    }
                    offset += n
                }
            }
        }
    }

    public func close() {
        fd.withLock { fd in
            if fd > 2 { Glibc.close(fd) }
            fd = -1
        }
    }
}

public final class JSONLinesSink: RecordSink {
    private let output: OutputFile
    /// An encoding buffer kept between calls (taken out while in use, so concurrent callers each get
    /// one): a large batch otherwise grows a fresh buffer by doubling and hands it back to the kernel.
    private let spare = Mutex<JSONWriter?>(nil)

    public init(output: OutputFile) { self.output = output }

    public func write(_ records: [TapRecord]) {
        var writer = spare.withLock { $0.take() } ?? JSONWriter(capacity: 320 * records.count)
        writer.removeAll()
        for record in records { JSONLinesEncoder.encode(record, into: &writer) }
        writer.withBytes { output.write($0) }
        // Keep buffers up to 4 MiB; a rare huge batch should not pin its memory.
        if writer.capacity <= 4 << 20 { spare.withLock { $0 = writer } }
    }
}

public final class FanoutSink: RecordSink {
    private let sinks: [any RecordSink]
    public init(_ sinks: [any RecordSink]) { self.sinks = sinks }
    public func write(_ records: [TapRecord]) { for sink in sinks { sink.write(records) } }
}
