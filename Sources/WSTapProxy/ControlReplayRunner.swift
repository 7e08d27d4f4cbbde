import Dispatch
import WSTapControl
import WSTapDissect
import WSTapFormats
import WSTapRecording
import WSTapRelay
import WSTapReplay

/// `POST /api/replays` on a running proxy: a stored connection replayed as `wstap replay` does, its
/// records going where the proxy's go (the file, the console, the UI), under a connection number of
/// its own. The answer says what happened and, against the recording, what differs.
public final class ControlReplayRunner: ReplayRunning {
    private let sink: any RecordSink
    private let ids: ConnectionIDs
    private let upstreamCAFile: String?
    private let insecure: Bool
    private let payloadCap: Int

    public init(sink: any RecordSink, ids: ConnectionIDs, upstreamCAFile: String?, insecure: Bool, payloadCap: Int) {
        self.sink = sink
        self.ids = ids
        self.upstreamCAFile = upstreamCAFile
        self.insecure = insecure
        self.payloadCap = payloadCap
    }

    public func replay(_ order: ReplayOrder, answer: @escaping @Sendable (ControlResponse) -> Void) {
        var builder = RecordingBuilder()
        for record in order.records { builder.add(record) }
        guard let recorded = builder.recording.connections.first(where: { $0.id == order.connection }) else {
            return answer(.error(404, "connection \(order.connection) has no WebSocket session to replay"))
        }
        let client = recorded.messages(from: .clientToServer).filter { !$0.opcode.isControl }
        if !order.allowTruncated, client.contains(where: { $0.truncated || $0.inflateFailed }) {
            return answer(.error(409, "some of connection \(order.connection)'s client messages were kept only in part (--max-payload), so a replay would send less: "
                                 + "run the proxy with --max-payload unlimited, or ask with \"allow_truncated\": true"))
        }
        let url: UpstreamURL
        do { url = try UpstreamURL.parse(order.to ?? recorded.open.url) } catch {
            return answer(.error(400, "cannot replay to '\(order.to ?? recorded.open.url)': \(error)"))
        }
        var options = ReplayOptions()
        guard let pace = ReplayOptions.Pace(parsing: order.pace) else {
            return answer(.error(400, "\"pace\" is reply, asap, timing or idle=DURATION (idle=300ms, idle=2s)"))
        }
        options.pace = pace
        options.payloadCap = payloadCap
        options.connectionID = ids.nextUnlisted()
        let target = ReplayTarget(secure: url.scheme == "wss", host: url.host, port: url.port, path: url.path)
        let tls = target.secure ? ReplayClient.TLS(upstreamCAFile: upstreamCAFile, insecure: insecure, keyLog: nil,
                                                   serverName: UpstreamTLS.forHost(target.host).serverName) : nil
        let sink = self.sink, chosen = options
        // The replay waits on its own connection; that wait is not the control server's.
        DispatchQueue.global().async {
            let session: ReplaySession
            do {
                session = try ReplayClient.run(recorded, target: target, options: chosen, tls: tls, sink: sink)
            } catch {
                return answer(.error(502, "replay to \(target): \(error)"))
            }
            let result = session.result
            let differences = result.failure == nil
                ? ReplayDiff.compare(recorded: session.recordedReplies, replayed: session.receivedReplies, correlate: nil, ignore: order.ignore) : []
            answer(.json { writer in
                writer.beginObject()
                writer.key("conn"); writer.integer(chosen.connectionID)
                writer.key("replayed"); writer.integer(order.connection)
                writer.key("target"); writer.string(result.target)
                writer.key("failure")
                if let failure = result.failure { writer.string(failure) } else { writer.null() }
                writer.key("sent"); writer.integer(result.sent)
                writer.key("client_messages"); writer.integer(client.count)
                writer.key("received"); writer.integer(session.receivedReplies.count)
                writer.key("recorded_replies"); writer.integer(session.recordedReplies.count)
                for (name, lines) in [("handshake", result.handshake), ("timeouts", result.timeouts), ("notes", result.notes), ("differences", differences.map(\.description))] {
                    writer.key(dynamic: name)
                    writer.beginArray()
                    for line in lines { writer.string(line) }
                    writer.endArray()
                }
                writer.key("same"); writer.bool(result.failure == nil && differences.isEmpty && !result.handshakeDiffers)
                writer.endObject()
            })
        }
    }
}
