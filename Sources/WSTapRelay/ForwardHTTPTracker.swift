import NIOCore
import WSTapDissect
import WSTapWire

/// Plain HTTP through the forward proxy (absolute-form requests). Clients reuse one proxy connection
/// for requests to many hosts, so the relay cannot be a pipe to the first host: this follows request
/// boundaries on the client stream and response boundaries on the upstream stream, rewrites each
/// request head to origin form, and says when the upstream must change. Sans-IO: bytes in, decisions out.
struct ForwardHTTPTracker {
    struct Target: Equatable {
        var host: String
        var port: Int
        var tls: UpstreamTLS?
        var label: String
    }

    enum Output {
        /// Bytes to send to the current upstream (a rewritten head, or body bytes as they were).
        case forward(ByteBuffer)
        /// A request for another host: once the current upstream has answered everything, connect to
        /// `target`, send `head` (already rewritten), then pass `rest` (what the client sent after the
        /// head, not yet parsed) back through `clientBytes`.
        case switchUpstream(Target, head: ByteBuffer, rest: ByteBuffer)
        /// The bytes could not be parsed as HTTP: answer 400.
        case malformed(String)
    }

    private(set) var current: Target
    private var requestHead = HTTPHeadParser()
    private var requestBody: HTTPBodyFraming?
    private var responseHead = HTTPHeadParser()
    private var responseBody: HTTPBodyFraming?
    /// Methods of requests sent to the current upstream and not fully answered yet (HEAD has no body).
    private var unanswered: [String] = []
    /// After a WebSocket upgrade request the stream is no longer HTTP: both directions become a pipe.
    private(set) var isPipe = false
    private var upgradeRequested = false
    /// A host switch waiting for `unanswered` to drain; client bytes are held in `held` meanwhile.
    private var switchTarget: Target?
    private var switchHead = ByteBuffer()
    private var held = ByteBuffer()

    init(first: Target) { current = first }

    var isHoldingClientBytes: Bool { switchTarget != nil }
    var heldByteCount: Int { held.readableBytes }

    mutating func clientBytes(_ buffer: ByteBuffer) -> [Output] {
        if isPipe || upgradeRequested { return [.forward(buffer)] }
        if switchTarget != nil {
            var copy = buffer
            held.writeBuffer(&copy)
            return []
        }
        var outputs: [Output] = []
        var rest = buffer
        while rest.readableBytes > 0 {
            if requestBody != nil {
                let before = rest.readerIndex
                var index = 0
                let ok: Bool = rest.withUnsafeReadableBytes { raw in
                    do { try requestBody!.consume(raw, index: &index); return true } catch { return false }
                }
                guard ok else { return outputs + [.malformed("bad request body framing")] }
                outputs.append(.forward(rest.getSlice(at: before, length: index)!))
                rest.moveReaderIndex(forwardBy: index)
                if requestBody!.isDone { requestBody = nil }
                continue
            }
            let parsed: (head: HTTPHead, consumed: Int)?
            do {
                parsed = try rest.withUnsafeReadableBytes { try requestHead.feed($0) }
            } catch {
                return outputs + [.malformed("\(error)")]
            }
            guard let (head, consumed) = parsed else { return outputs }
            rest.moveReaderIndex(forwardBy: consumed)
            guard let method = head.method, let targetText = head.target, let url = try? UpstreamURL.parse(targetText) else {
                return outputs + [.malformed("expected an absolute-form request (GET http://host/path), got \(head.target ?? "?")")]
            }
            var outgoing = head
            outgoing.startLine = .request(method: method, target: url.path ?? "/", version: head.httpVersion)
            outgoing.removeHeader("Proxy-Connection")
            var headBuffer = ByteBuffer(bytes: outgoing.encoded())
            let target = Target(host: url.host, port: url.port, tls: url.scheme == "wss" ? .forHost(url.host) : nil, label: url.description)
            do {
                let body = try HTTPBodyFraming.forRequest(head)
                requestBody = body.isDone ? nil : body
            } catch {
                return outputs + [.malformed("\(error)")]
            }
            if head.isWebSocketUpgradeRequest { upgradeRequested = true }
            if target.host.lowercased() != current.host.lowercased() || target.port != current.port || target.tls != current.tls {
                // Hold this request and everything after it until the current upstream is done.
                switchTarget = target
                switchHead = headBuffer
                held = rest
                pendingMethod = method
                if unanswered.isEmpty { return outputs + [takeSwitch()] }
                return outputs
            }
            unanswered.append(method)
            outputs.append(.forward(headBuffer))
            headBuffer = ByteBuffer()
            if upgradeRequested, rest.readableBytes > 0 { outputs.append(.forward(rest)); break }
        }
        return outputs
    }

    private var pendingMethod = "GET"

    /// Follows response boundaries; returns a switch once the last outstanding response has ended.
    mutating func upstreamBytes(_ buffer: ByteBuffer) -> [Output] {
        if isPipe { return [] }
        var rest = buffer
        while rest.readableBytes > 0 && !isPipe {
            if responseBody != nil {
                var index = 0
                let ok: Bool = rest.withUnsafeReadableBytes { raw in
                    do { try responseBody!.consume(raw, index: &index); return true } catch { return false }
                }
                guard ok else { isPipe = true; break }  // cannot follow any more: keep relaying as a pipe
                rest.moveReaderIndex(forwardBy: index)
                if responseBody!.isDone { responseBody = nil; responseEnded() }
                continue
            }
            let parsed: (head: HTTPHead, consumed: Int)?
            do {
                parsed = try rest.withUnsafeReadableBytes { try responseHead.feed($0) }
            } catch {
                isPipe = true  // not HTTP any more: keep relaying as a pipe
                break
            }
            guard let (head, consumed) = parsed else { break }
            rest.moveReaderIndex(forwardBy: consumed)
            let status = head.status ?? 0
            if status == 101 { isPipe = true; break }
            if (100..<200).contains(status) { continue }
            if upgradeRequested { upgradeRequested = false }  // refused upgrade: the client may go on with HTTP
            guard let body = try? HTTPBodyFraming.forResponse(head, requestMethod: unanswered.first) else { isPipe = true; break }
            if body.isDone { responseEnded() } else { responseBody = body }
        }
        if switchTarget != nil && unanswered.isEmpty { return [takeSwitch()] }
        return []
    }

    private mutating func responseEnded() {
        if !unanswered.isEmpty { unanswered.removeFirst() }
    }

    private mutating func takeSwitch() -> Output {
        let target = switchTarget!
        switchTarget = nil
        current = target
        unanswered = [pendingMethod]
        requestHead = HTTPHeadParser()
        responseHead = HTTPHeadParser()
        responseBody = nil
        let rest = held
        held = ByteBuffer()
        return .switchUpstream(target, head: switchHead, rest: rest)
    }
}
