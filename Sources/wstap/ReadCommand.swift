import ArgumentParser
import Synchronization
import WSTapCapture
import WSTapControl
import WSTapDissect
import WSTapFormats
import WSTapRecording

#if canImport(Glibc)
import Glibc
#endif

struct ReadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read",
        abstract: "Read captures (pcap, pcapng), wstap's JSON Lines or HAR logs and write the same records as the live proxy.",
        discussion: """
            TCP streams are rebuilt (out-of-order segments, retransmissions, gaps) and every connection that \
            starts with an HTTP request is dissected: upgrades, frames, messages, diagnostics. Captures that \
            start after the upgrade are found by a heuristic (plausible frames, RSV1 included; never HTTP or \
            TLS) or by --decode-as PORT; their open record says which. Records carry the capture's \
            addresses and the capture time of the packet that completed them. TLS connections are decrypted \
            (TLS 1.2 and 1.3, AES-GCM and ChaCha20-Poly1305) with --keylog or with secrets embedded in a pcapng.

            JSON Lines (--jsonl of any wstap command) and HAR logs (Chrome DevTools, mitmproxy, HTTP Toolkit, \
            wstap --har) are read too, told apart by their first bytes, so recordings convert between the \
            formats. HAR keeps messages but not frames: its messages read as one uncompressed frame each.

            Examples:
              wstap read session.pcapng
              wstap read capture.pcap --jsonl records.jsonl -q
              wstap read late-start.pcap --decode-as 9123
              wstap read wss-traffic.pcap --keylog $SSLKEYLOGFILE
              wstap read capture.pcap --har session.har -q
              wstap read session.har --jsonl session.jsonl -q
              wstap read session.pcapng -q --ui 8081       (look at it in the browser)
            """
    )

    @Argument(help: ArgumentHelp("Captures (pcap, pcapng), JSON Lines recordings or HAR logs, read in order.", valueName: "file"))
    var files: [String]

    @OptionGroup var output: OutputOptions
    @OptionGroup var discovery: DiscoveryOptions

    @OptionGroup(title: "Web UI (docs/control-api.md)") var control: ControlOptions

    @Option(name: .long, help: ArgumentHelp("Threads that dissect connections in parallel (default: one per core; 1 reads on a single thread). The records are the same either way.", valueName: "n"))
    var threads: Int?

    func validate() throws {
        if let threads, threads < 1 || threads > 64 { throw ValidationError("--threads must be between 1 and 64.") }
    }

    func run() async throws {
        var sinks = output.makeSinks(background: true)
        guard let store = control.makeStore() else {
            do throws(ReadFailure) { try readFiles(into: sinks) } catch { fail(error.message) }
            return
        }
        // The page is there while the files are read; their records reach it as they are made.
        let feed = StoreFeed(store)
        sinks = OutputOptions.Sinks(all: FanoutSink([sinks.all, feed]), har: sinks.har, background: sinks.background, filtered: sinks.filtered)
        let server = await control.start(store: store, source: files.map(baseName).joined(separator: ", "))
        OutputFile.standardError.write(Array("wstap: web UI on \(files.count == 1 ? files[0] : counted(files.count, "file")) at \(server.url)\n".utf8))
        do throws(ReadFailure) {
            try readFiles(into: sinks, feed: feed)
        } catch {
            // Nothing to look at: a failure like any other. Otherwise what was read before the damage
            // stays to be looked at.
            if store.extent.lastSeq == 0 { fail(error.message) }
            OutputFile.standardError.write(Array("wstap: \(error.message)\n".utf8))
        }
        let extent = store.extent
        let kept = extent.droppedRecords > 0 ? " (the newest ones; --ui-store keeps \(store.limitBytes >> 20) MiB)" : ""
        OutputFile.standardError.write(Array("wstap: \(counted(Int(extent.lastSeq - extent.droppedThrough), "record")) served\(kept); Ctrl-C ends\n".utf8))
        ShutdownSignals.install {}
        try await server.wait()
    }

    /// Reads every file into the sinks; the first failure ends the reading, with what was read before
    /// it already written.
    func readFiles(into sinks: OutputOptions.Sinks, feed: StoreFeed? = nil) throws(ReadFailure) {
        // A progress line only where it cannot mix with records: stderr is a terminal and the console
        // records are not going to that same terminal.
        let showProgress = isatty(STDERR_FILENO) == 1 && (output.quiet || output.jsonl == "-" || isatty(STDOUT_FILENO) == 0)
        for file in files {
            // Connection numbers restart in each file; the UI's store numbers them on instead.
            feed?.startFile()
            let kind: RecordingFile.Kind
            do { kind = try RecordingFile.kind(of: file) } catch {
                sinks.finish()
                throw ReadFailure("\(error)")
            }
            if kind != .capture {
                try readRecording(file, kind: kind, into: sinks)
                continue
            }
            // One session per file: connection ids restart, as each file is its own capture.
            let sessions = discovery.makeSessions(output.dissectorConfiguration, count: dissectingThreads, file: file)
            let progress = showProgress ? ProgressLine(file: file) : nil
            let report = progress.map { line in { (progress: PcapFile.Progress) in line.update(progress) } }
            do {
                let summary: PcapFile.Summary
                if sessions.count == 1 {
                    summary = try PcapFile.read(path: file, session: sessions[0], emit: { sinks.all.write($0) }, progress: report)
                } else {
                    summary = try PcapFile.read(path: file, sessions: sessions, emit: { sinks.all.write($0) }, progress: report)
                }
                sinks.drain()
                progress?.clear()
                discovery.reportTLS(of: sessions)
                if summary.clampedTimestamps > 0 {
                    let count = summary.clampedTimestamps
                    let text = "wstap: \(counted(count, "packet")) in '\(file)' \(count == 1 ? "claims" : "claim") a time after the year 2262; "
                        + "their records carry 2262-04-11 23:47:16 UTC instead\n"
                    OutputFile.standardError.write(Array(text.utf8))
                }
            } catch {
                // Everything read before the damage is written before the error line.
                sinks.finish()
                progress?.clear()
                throw ReadFailure("\(error)")
            }
        }
        sinks.finish()
        if let filtered = sinks.filtered, !output.quiet {
            let (seen, kept) = filtered.counts
            OutputFile.standardError.write(Array("wstap: --filter kept \(grouped(kept)) of \(counted(seen, "record"))\n".utf8))
        }
    }
}

extension ReadCommand {
    /// A JSON Lines or HAR file: its records go to the sinks as they are read; on damage, what was read
    /// before it is written, then one line says where, and the exit status is 1.
    func readRecording(_ file: String, kind: RecordingFile.Kind, into sinks: OutputOptions.Sinks) throws(ReadFailure) {
        var batch: [TapRecord] = []
        batch.reserveCapacity(256)
        var count = 0
        do {
            try RecordingFile.readRecords(path: file, kind: kind) { record in
                batch.append(record)
                count += 1
                if batch.count == 256 {
                    sinks.all.write(batch)
                    batch.removeAll(keepingCapacity: true)
                }
            }
            sinks.all.write(batch)
            sinks.drain()
        } catch {
            sinks.all.write(batch)
            sinks.finish()
            let kept = count > 0 ? "; the \(counted(count, "record")) before it were written" : ""
            let hint = count == 0 && kind == .jsonLines ? " (wstap reads its own JSON Lines, HAR logs and pcap/pcapng captures)" : ""
            throw ReadFailure("\(file): \(error)\(kept)\(hint)")
        }
    }


    /// One per core by default: reading and writing records take threads of their own too, but they
    /// mostly wait, and connections are what there is most of to do.
    var dissectingThreads: Int {
        if let threads { return threads }
        return max(1, min(8, sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    }
}

struct ReadFailure: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

/// The UI's copy of what `read` makes. Each file numbers its connections from 1; here the numbers go
/// on from the previous file's, so two captures' connections do not merge in the UI.
final class StoreFeed: RecordSink {
    private let store: RecordStore
    private let numbering = Mutex((offset: UInt64(0), highest: UInt64(0)))

    init(_ store: RecordStore) { self.store = store }

    func startFile() { numbering.withLock { $0.offset = $0.highest } }

    func write(_ records: [TapRecord]) {
        let renumbered = numbering.withLock { state in
            records.map { record in
                var record = record
                record.connection += state.offset
                state.highest = max(state.highest, record.connection)
                return record
            }
        }
        store.append(renumbered)
    }
}

private func baseName(_ path: String) -> String {
    path.split(separator: "/").last.map(String.init) ?? path
}

/// "reading big.pcap: 41% of 100.0 MB, 120,345 packets, 87 connections" on stderr, redrawn in place at
/// most four times a second.
final class ProgressLine {
    private let file: String
    private let total: Int64
    private var lastDraw: UInt64 = 0

    init(file: String) {
        self.file = file
        var info = stat()
        total = stat(file, &info) == 0 ? Int64(info.st_size) : 0
    }

    func update(_ progress: PcapFile.Progress) {
        let now = monotonicMilliseconds()
        guard now - lastDraw >= 250 else { return }
        lastDraw = now
        let share = total > 0 ? " \(min(100, progress.bytesRead * 100 / total))% of \(megabytes(total))," : ""
        let text = "\rreading \(file):\(share) \(counted(progress.packets, "packet")), \(counted(progress.connections, "connection"))\u{1B}[K"
        OutputFile.standardError.write(Array(text.utf8))
    }

    func clear() {
        if lastDraw != 0 { OutputFile.standardError.write(Array("\r\u{1B}[K".utf8)) }
    }

    private func megabytes(_ bytes: Int64) -> String {
        let tenths = bytes * 10 / 1_000_000
        return "\(tenths / 10).\(tenths % 10) MB"
    }
}

func grouped(_ value: Int) -> String {
    let digits = Array(String(value))
    var out = ""
    for (index, digit) in digits.enumerated() {
        if index > 0 && (digits.count - index) % 3 == 0 { out.append(",") }
        out.append(digit)
    }
    return out
}

/// "1 packet", "12,345 packets".
func counted(_ value: Int, _ noun: String) -> String {
    "\(grouped(value)) \(noun)\(value == 1 ? "" : "s")"
}

func monotonicMilliseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec) / 1_000_000
}
