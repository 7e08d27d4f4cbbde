import WSTapCapture
import WSTapDissect
import WSTapFilter
import WSTapFormats
import WSTapRecording

/// A recording for `replay` and `mock`, from JSON Lines, HAR or a capture (dissected again with
/// whole payloads, whatever --max-payload says), or one line and exit 1.
enum RecordingSource {
    /// The recording, and with a filter the connections a record of which matches it.
    static func load(_ source: String, readKeylog: String?, filter: Filter?, maxInflate: UInt64) -> (recording: Recording, matching: Set<UInt64>?) {
        var selection = filter.map(FilterSelection.init)
        var matching: Set<UInt64>? = selection == nil ? nil : []
        var kept: [TapRecord] = []
        let observe: (TapRecord) -> Void = { record in
            guard selection != nil else { return }
            kept.removeAll(keepingCapacity: true)
            selection!.select(record, into: &kept)
            for record in kept { matching!.insert(record.connection) }
        }
        do {
            let kind = try RecordingFile.kind(of: source)
            if kind == .capture {
                var configuration = StreamDissector.Configuration()
                configuration.payloadCap = Int(clamping: maxInflate)
                configuration.maxInflatedMessage = maxInflate
                let session = CaptureSession(configuration: configuration)
                if let readKeylog { session.keyLog = try TLSKeyLog(path: readKeylog) }
                if let embedded = PcapngSecrets.keyLogText(path: source) {
                    session.keyLog = session.keyLog ?? TLSKeyLog()
                    session.keyLog!.add(text: embedded)
                }
                return (try RecordingFile.recording(path: source, session: session, observe: observe), matching)
            }
            return (try RecordingFile.recording(path: source, observe: observe), matching)
        } catch {
            fail("\(source): \(error)")
        }
    }
}
