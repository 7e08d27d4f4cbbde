import Foundation
import Testing
@testable import WSTapCapture
import WSTapDissect

/// Every capture file that ever crashed or hung a reader (found by hand or by the fuzzer) is kept in
/// Tests/Regressions/capture-file and read again here, on one thread and sharded.
@Suite struct RegressionInputTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../Regressions/capture-file").standardized

    static var files: [URL] {
        ((try? FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)) ?? [])
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
    }

    @Test func everyKeptCaptureFileIsReadToItsEndOrItsDamage() {
        #expect(!Self.files.isEmpty)
        for file in Self.files {
            // A thrown error is the damaged-file path (one line, exit 1); what must not happen is a trap.
            _ = try? PcapFile.read(path: file.path, session: CaptureSession()) { _ in }
            _ = try? PcapFile.read(path: file.path, sessions: [CaptureSession(), CaptureSession()]) { _ in }
        }
    }

    @Test func aTimestampAfter2262IsClampedAndCounted() throws {
        let file = Self.directory.appendingPathComponent("pcapng-timestamp-after-2262.pcapng").path
        var records: [TapRecord] = []
        let summary = try PcapFile.read(path: file, session: CaptureSession()) { records += $0 }
        #expect(summary.clampedTimestamps == 1)
        let sharded = try PcapFile.read(path: file, sessions: [CaptureSession(), CaptureSession()]) { _ in }
        #expect(sharded == summary)
    }

    @Test func packetTimesAreClampedAtBothEnds() {
        #expect(probe(seconds: 1, fraction: 5, unit: 1000) == (1_000_005_000, true))
        #expect(probe(seconds: Int64.max / 1_000_000_000 + 1, fraction: 0, unit: 1) == (Int64.max, false))
        #expect(probe(seconds: 9_223_372_036, fraction: 999_999_999, unit: 1) == (Int64.max, false))
        #expect(probe(seconds: -1, fraction: 0, unit: 1) == (0, false))
        #expect(probe(seconds: 0, fraction: Int64.max, unit: 1000) == (Int64.max, false))
    }

    private func probe(seconds: Int64, fraction: Int64, unit: Int64) -> (Int64, Bool) {
        let (time, exact) = PacketTime.timestamp(seconds: seconds, fraction: fraction, fractionUnit: unit)
        return (time.nanoseconds, exact)
    }
}
