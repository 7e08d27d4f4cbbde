import NIOCore
import WSTapDissect
import WSTapWire

/// Follows HTTP/1.1 message boundaries in both directions of a relayed connection (every mode but a
/// CONNECT tunnel relayed as bytes). Sans-IO: bytes in, decisions and bytes out.
///
/// Each request head is rewritten for its upstream (`RequestRewrite`), and every head that carries both
/// Transfer-Encoding and Content-Length loses the Content-Length (RFC 9112 §6.3: an intermediary MUST
/// remove it, or the two sides may frame the body differently). Nothing else changes: bodies, heads
/// that need no rewrite, and everything after a 101 leave with the bytes they came with. In forward
/// mode clients reuse one proxy connection for requests to many hosts, so the follower also says when
/// the upstream must change (after the current one has answered everything).
struct HTTPExchangeFollower {
    struct Target: Equatable {
        var host: String
        var port: Int
        var tls: UpstreamTLS?
        /// How the upstream is named in messages, e.g. "ws://host:port/path".
        var label: String
        /// `host[:port]` as it goes in a URL, the port left out when it is the scheme's default.
        var authority: String
    }

    /// The deliberate changes to each request head.
    struct RequestRewrite {
        /// Reverse mode: the Host the upstream expects.
        var host: String?
        /// Reverse mode: the upstream URL's path replaces the client's target.
        var target: String?
        /// Forward mode and intercepted TLS: absolute-form targets become origin form (RFC 9112 §3.2.2).
        var originForm = false
        /// Forward mode: Proxy-Connection and Proxy-Authorization were meant for wstap.
        var dropProxyFields = false
        /// `--compression strip`: permessage-deflate leaves the client's extension offer.
        var stripDeflate = false
    }

    enum Routing {
        /// Reverse mode and intercepted TLS: every request goes to this upstream.
        case fixed(Target)
        /// Forward mode: absolute-form requests, each to the host it names; the first one's host.
        case absoluteForm(first: Target)
    }

    enum Output {
        /// Bytes for the current upstream (a rewritten head, or bytes as they were).
        case forward(ByteBuffer)
        /// A request for another host: once the current upstream has answered everything, connect to
        /// `target`, send `head` (already rewritten), then pass `rest` (what the client sent after the
        /// head, not yet parsed) back through `clientBytes`.
        case switchUpstream(Target, head: ByteBuffer, rest: ByteBuffer)
        /// The client's bytes cannot be followed: answer with this status and close.
        case refuse(status: Int, reason: String, message: String)
    }

    private let routing: Routing
    private let rewrite: RequestRewrite
    private(set) var current: Target
    private let headLimit: Int
    private var requestHead: HTTPHeadParser
    private var requestBody: HTTPBodyFraming?
    private var responseHead: HTTPHeadParser
    private var responseBody: HTTPBodyFraming?
    /// Methods of requests sent to the current upstream and not fully answered yet (HEAD has no body).
    private var unanswered: [String] = []
    /// After a 101 (or bytes that are not HTTP) the stream is no longer followed: both ways are a pipe.
    private(set) var isPipe = false
    /// The client asked to upgrade: its later bytes pass as they are (they may be frames sent before
    /// the answer) until the server refuses.
    private var upgradeRequested = false
    /// A host switch waiting for `unanswered` to drain; client bytes are held in `held` meanwhile.
    private var switchTarget: Target?
    private var switchHead = ByteBuffer()
    private var switchMethod = "GET"
    private var held = ByteBuffer()

    init(routing: Routing, rewrite: RequestRewrite, headLimit: Int = HTTPHeadParser.defaultLimit) {
        self.routing = routing
        self.rewrite = rewrite
        self.headLimit = headLimit
        switch routing {
        case .fixed(let target), .absoluteForm(let target): current = target
        }
        requestHead = HTTPHeadParser(limit: headLimit, expecting: .request)
        responseHead = HTTPHeadParser(limit: headLimit, expecting: .response)
    }

    /// Client bytes held here (a partial head, or requests waiting for a host switch).
    var heldByteCount: Int { held.readableBytes + requestHead.bufferedByteCount }

    // MARK: - Client to server

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
                guard ok else { return outputs + [.refuse(status: 400, reason: "Bad Request", message: "cannot follow the HTTP stream: bad request body framing")] }
                outputs.append(.forward(rest.getSlice(at: before, length: index)!))
                rest.moveReaderIndex(forwardBy: index)
                if requestBody!.isDone { requestBody = nil }
                continue
            }
            let parsed: (head: HTTPHead, consumed: Int)?
            do {
                parsed = try rest.withUnsafeReadableBytes { try requestHead.feed($0) }
            } catch let error as HTTPHeadError {
                return outputs + [Self.refusal(for: error)]
            } catch {
                return outputs + [.refuse(status: 400, reason: "Bad Request", message: "cannot follow the HTTP stream: \(error)")]
            }
            guard let (head, consumed) = parsed else { return outputs }
            rest.moveReaderIndex(forwardBy: consumed)
            guard head.method != nil else {
                return outputs + [.refuse(status: 400, reason: "Bad Request", message: "expected an HTTP request, got a response head")]
            }
            let target: Target
            switch routing {
            case .fixed(let fixed):
                target = fixed
            case .absoluteForm:
                guard let url = try? UpstreamURL.parse(head.target ?? "") else {
                    return outputs + [.refuse(status: 400, reason: "Bad Request",
                                              message: "expected an absolute-form request (GET http://host/path), got \(head.target ?? "?")")]
                }
                target = Self.target(for: url, requested: head.target ?? "")
            }
            let framing: HTTPBodyFraming
            do {
                framing = try HTTPBodyFraming.forRequest(head)
            } catch {
                return outputs + [.refuse(status: 400, reason: "Bad Request", message: "cannot follow the HTTP stream: \(error)")]
            }
            requestBody = framing.isDone ? nil : framing
            if head.isWebSocketUpgradeRequest { upgradeRequested = true }
            let headBuffer = ByteBuffer(bytes: rewritten(head).bytes)
            if target.host.lowercased() != current.host.lowercased() || target.port != current.port || target.tls != current.tls {
                // Hold this request and everything after it until the current upstream is done.
                switchTarget = target
                switchHead = headBuffer
                switchMethod = head.method ?? "GET"
                held = rest
                if unanswered.isEmpty { return outputs + [takeSwitch()] }
                return outputs
            }
            unanswered.append(head.method ?? "GET")
            outputs.append(.forward(headBuffer))
            if upgradeRequested, rest.readableBytes > 0 { outputs.append(.forward(rest)); break }
        }
        return outputs
    }

    /// The client sent FIN: an incomplete head it sent so far goes on as it is (fixed routing only:
    /// without its head, a forward-mode request has no host to go to).
    mutating func clientEnded() -> [Output] {
        guard case .fixed = routing, requestHead.bufferedByteCount > 0, switchTarget == nil else { return [] }
        return [.forward(ByteBuffer(bytes: requestHead.takeBuffered()))]
    }

    /// The request head as it leaves: the mode's rewrite, Content-Length gone where chunking frames it.
    private func rewritten(_ head: HTTPHead) -> HTTPHead {
        var out = head
        if rewrite.originForm, let target = head.target, !target.hasPrefix("/"), target != "*",
           let url = try? UpstreamURL.parse(target) {
            out.setRequestTarget(url.path ?? "/")
        }
        if let target = rewrite.target { out.setRequestTarget(target) }
        if let host = rewrite.host { out.setHeader("Host", host) }
        if rewrite.dropProxyFields {
            out.removeHeaders("Proxy-Connection")
            out.removeHeaders("Proxy-Authorization")
        }
        if rewrite.stripDeflate { Self.stripDeflate(&out) }
        Self.dropContentLengthIfChunked(&out)
        return out
    }

    /// Takes permessage-deflate out of Sec-WebSocket-Extensions, keeping any other extension offered.
    static func stripDeflate(_ head: inout HTTPHead) {
        let values = head.values("sec-websocket-extensions")
        guard !values.isEmpty else { return }
        func trimmed(_ text: Substring) -> Substring {
            var text = text.drop { $0 == " " || $0 == "\t" }
            while let last = text.last, last == " " || last == "\t" { text = text.dropLast() }
            return text
        }
        // Offers are split on commas: a quoted comma inside a parameter is not something any extension uses.
        let kept = values.flatMap { $0.split(separator: ",") }.map { String(trimmed($0)) }
            .filter { !$0.isEmpty && $0.split(separator: ";").first.map { trimmed($0).lowercased() } != "permessage-deflate" }
        head.removeHeaders("Sec-WebSocket-Extensions")
        if !kept.isEmpty { head.setHeader("Sec-WebSocket-Extensions", kept.joined(separator: ", ")) }
    }

    static func dropContentLengthIfChunked(_ head: inout HTTPHead) {
        if !head.values("transfer-encoding").isEmpty && !head.values("content-length").isEmpty {
            head.removeHeaders("Content-Length")
        }
    }

    /// `requested` is the absolute-form target as the client sent it: messages name it with its own
    /// scheme (http://… stays http://, though it is relayed like ws://).
    static func target(for url: UpstreamURL, requested: String) -> Target {
        Target(host: url.host, port: url.port, tls: url.scheme == "wss" ? .forHost(url.host) : nil, label: requested,
               authority: url.hostHeader)
    }

    private static func refusal(for error: HTTPHeadError) -> Output {
        if case .tooLarge(let limit) = error {
            return .refuse(status: 431, reason: "Request Header Fields Too Large",
                           message: "the request head is larger than \(limit) bytes (--max-head-size)")
        }
        return .refuse(status: 400, reason: "Bad Request", message: "cannot follow the HTTP stream: \(error)")
    }

    // MARK: - Server to client

    /// Follows response boundaries; returns the bytes for the client (response heads rewritten where
    /// needed, the rest as it came) and a host switch once the last outstanding response has ended.
    mutating func upstreamBytes(_ buffer: ByteBuffer) -> (toClient: [ByteBuffer], switchUpstream: Output?) {
        if isPipe { return ([buffer], nil) }
        var out: [ByteBuffer] = []
        var rest = buffer
        // Whether `out` differs from `buffer` cut in pieces: if not, the buffer goes as one write.
        var changed = false
        while rest.readableBytes > 0 && !isPipe {
            if responseBody != nil {
                var index = 0
                let ok: Bool = rest.withUnsafeReadableBytes { raw in
                    do { try responseBody!.consume(raw, index: &index); return true } catch { return false }
                }
                guard ok else { becomePipe(); break }  // cannot follow any more: keep relaying as a pipe
                out.append(rest.readSlice(length: index)!)
                if responseBody!.isDone { responseBody = nil; responseEnded() }
                continue
            }
            let heldBefore = responseHead.bufferedByteCount
            let parsed: (head: HTTPHead, consumed: Int)?
            do {
                parsed = try rest.withUnsafeReadableBytes { try responseHead.feed($0) }
            } catch {
                // Not HTTP (or too large to follow): what was held before this read goes first, then
                // everything as it is (the parser's copy of this read's bytes is dropped, not sent twice).
                let earlier = responseHead.takeBuffered().prefix(heldBefore)
                if !earlier.isEmpty { out.append(ByteBuffer(bytes: earlier)); changed = true }
                becomePipe()
                break
            }
            guard let (head, consumed) = parsed else {
                rest.moveReaderIndex(forwardBy: rest.readableBytes)  // held in the parser until complete
                changed = true
                break
            }
            var outgoing = head
            Self.dropContentLengthIfChunked(&outgoing)
            if outgoing.bytes == head.bytes && heldBefore == 0 {
                out.append(rest.readSlice(length: consumed)!)  // the head as it came, no copy
            } else {
                out.append(ByteBuffer(bytes: outgoing.bytes))
                rest.moveReaderIndex(forwardBy: consumed)
                changed = true
            }
            let status = head.status ?? 0
            if status == 101 { becomePipe(); break }
            if (100..<200).contains(status) { continue }
            if upgradeRequested { upgradeRequested = false }  // refused upgrade: the client may go on with HTTP
            guard let body = try? HTTPBodyFraming.forResponse(head, requestMethod: unanswered.first) else { becomePipe(); break }
            if body.isDone { responseEnded() } else { responseBody = body }
        }
        if rest.readableBytes > 0 { out.append(rest) }
        if !changed { out = [buffer] }
        if switchTarget != nil && unanswered.isEmpty { return (out, takeSwitch()) }
        return (out, nil)
    }

    /// The upstream sent FIN: an incomplete head it sent goes to the client as it is.
    mutating func upstreamEnded() -> [ByteBuffer] {
        responseHead.bufferedByteCount > 0 ? [ByteBuffer(bytes: responseHead.takeBuffered())] : []
    }

    private mutating func becomePipe() {
        isPipe = true
        upgradeRequested = false
    }

    private mutating func responseEnded() {
        if !unanswered.isEmpty { unanswered.removeFirst() }
    }

    private mutating func takeSwitch() -> Output {
        let target = switchTarget!
        switchTarget = nil
        current = target
        unanswered = [switchMethod]
        requestHead = HTTPHeadParser(limit: headLimit, expecting: .request)
        responseHead = HTTPHeadParser(limit: headLimit, expecting: .response)
        responseBody = nil
        let rest = held
        held = ByteBuffer()
        return .switchUpstream(target, head: switchHead, rest: rest)
    }
}
