import WSTapDissect
import WSTapFilter
import WSTapFormats
import WSTapRules

/// The control API's routes (docs/control-api.md): a request in, a response out. The server shell
/// moves bytes and streams events; what each route means is decided here, where tests reach it
/// without a socket.
public final class ControlAPI: Sendable {
    public let store: RecordStore
    public let access: ControlAccess
    /// The live connections; nil when serving a capture or a recording.
    public let steering: (any ConnectionSteering)?
    /// The live rules; nil when serving a capture or a recording.
    public let rules: RuleControl?
    /// Replays of stored connections (`POST /api/replays`); nil when serving a capture or a recording.
    public let replays: (any ReplayRunning)?
    /// What the records come from when not live (`wstap read FILE… --ui`): the file names.
    public let source: String?
    /// wstap's version, for the HAR export's `creator`.
    public let version: String

    public init(store: RecordStore, access: ControlAccess, steering: (any ConnectionSteering)? = nil, rules: RuleControl? = nil,
                replays: (any ReplayRunning)? = nil, source: String? = nil, version: String = "dev") {
        self.store = store
        self.access = access
        self.steering = steering
        self.rules = rules
        self.replays = replays
        self.source = source
        self.version = version
    }

    /// Largest page of records one request gets.
    public static let maximumLimit = 10_000

    public func respond(to request: ControlRequest) -> ControlResponse {
        switch access.check(target: request.target, header: { request.headers[$0] }) {
        case .refused(let status, let reason):
            return .error(status, reason)
        case .setCookieAndRedirect(let location):
            return .complete(status: 303, contentType: "text/plain", body: Array("see \(location)\n".utf8),
                             headers: [("Set-Cookie", access.cookie), ("Location", location)])
        case .allowed:
            break
        }
        if let file = EmbeddedFiles.page[request.path] {
            guard request.method == "GET" || request.method == "HEAD" else { return .methodNotAllowed(request, allow: "GET") }
            return .complete(status: 200, contentType: file.contentType, body: file.body, headers: Self.pageHeaders)
        }
        let parts = request.path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        if parts.first == "api", let steered = steeringRoute(request, parts) ?? rulesRoute(request, parts) ?? replaysRoute(request, parts) { return steered }
        guard parts.first == "api", parts.count >= 2, parts.count <= 3 else {
            return .error(404, "no such route: \(request.path) (docs/control-api.md lists them)")
        }
        let resource = parts[1], item = parts.count == 3 ? parts[2] : nil
        switch (request.method, resource, item) {
        case ("GET", "status", nil):
            return status()
        case ("GET", "openapi.json", nil):
            return .complete(status: 200, contentType: "application/json", body: EmbeddedFiles.openAPI)
        case ("GET", "connections", nil):
            return connections(request)
        case ("GET", "connections", let id?):
            guard let id = UInt64(id) else { return .error(400, "a connection number is a whole number: /api/connections/7") }
            guard let summary = store.connection(id) else { return .error(404, "no connection \(id) is known (it may have been forgotten)") }
            return .json { summary.encode(into: &$0) }
        case ("GET", "records", nil):
            return records(request)
        case ("GET", "records", let seq?):
            guard let seq = UInt64(seq) else { return .error(400, "a record's seq is a whole number: /api/records/42") }
            guard let entry = store.entry(seq: seq) else {
                return .error(404, seq > store.extent.lastSeq ? "no record \(seq) yet" : "record \(seq) is no longer held (the store keeps the newest \(store.limitBytes >> 20) MiB)")
            }
            return .complete(status: 200, contentType: "application/json", body: entry.json)
        case ("GET", "events", nil):
            return events(request)
        case ("GET", "export", nil):
            return export(request)
        case (_, let known, _) where Self.knownRoutes.contains(known):
            return .methodNotAllowed(request, allow: "GET")
        default:
            return .error(404, "no such route: \(request.path) (docs/control-api.md lists them)")
        }
    }

    private static let knownRoutes: Set<String> = ["status", "connections", "records", "events", "holds", "rules", "openapi.json", "export", "replays"]

    /// The page shows payloads from the network: no script, style or connection but its own, no
    /// framing by another site, no referrer leaving with a URL.
    static let pageHeaders: [(String, String)] = [
        ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
    ]

    private func status() -> ControlResponse {
        let extent = store.extent
        return .json { writer in
            writer.beginObject()
            writer.key("first_seq"); writer.integer(extent.firstSeq)
            writer.key("last_seq"); writer.integer(extent.lastSeq)
            writer.key("dropped_through"); writer.integer(extent.droppedThrough)
            writer.key("dropped_records"); writer.integer(extent.droppedRecords)
            writer.key("store_bytes"); writer.integer(extent.bytes)
            writer.key("store_limit_bytes"); writer.integer(store.limitBytes)
            // Live connections can be steered; a capture or recording is only looked at.
            writer.key("live"); writer.bool(steering != nil)
            writer.key("source")
            if let source { writer.string(source) } else { writer.null() }
            writer.endObject()
        }
    }

    private func connections(_ request: ControlRequest) -> ControlResponse {
        let wanted = request.query["state"] ?? "all"
        guard ["open", "ended", "all"].contains(wanted) else { return .error(400, "state is open, ended or all") }
        let filter: Filter?
        do throws(ControlResponseError) { filter = try parseFilter(request) } catch { return error.response }
        var list = store.connections().filter { wanted == "all" || ($0.isOpen == (wanted == "open")) }
        if let filter {
            // A connection matches when one of its records held does.
            var matching: Set<UInt64> = []
            store.forEachEntry(filter: filter) { matching.insert($0.record.connection) }
            list = list.filter { matching.contains($0.id) }
        }
        return .json { writer in
            writer.beginObject()
            writer.key("connections")
            writer.beginArray()
            for summary in list { summary.encode(into: &writer) }
            writer.endArray()
            writer.endObject()
        }
    }

    private func records(_ request: ControlRequest) -> ControlResponse {
        let after: UInt64, limit: Int, connection: UInt64?, filter: Filter?
        do throws(ControlResponseError) {
            after = try number(request, "after") ?? 0
            limit = Int(min(try number(request, "limit") ?? 1000, UInt64(Self.maximumLimit)))
            connection = try number(request, "conn")
            filter = try parseFilter(request)
        } catch {
            return error.response
        }
        let page = store.entries(after: after, limit: limit, filter: filter, connection: connection)
        return .json { writer in
            writer.beginObject()
            writer.key("records")
            writer.beginArray()
            for entry in page.entries { writer.raw(entry.json) }
            writer.endArray()
            // Where to go on from (`after=` of the next request), and whether some asked for is gone.
            writer.key("next_after"); writer.integer(page.scannedThrough)
            writer.key("more"); writer.bool(page.scannedThrough < page.extent.lastSeq)
            writer.key("first_seq"); writer.integer(page.extent.firstSeq)
            writer.key("last_seq"); writer.integer(page.extent.lastSeq)
            writer.key("missed"); writer.bool(page.extent.startsAfter(after) && page.extent.droppedThrough > after)
            writer.endObject()
        }
    }

    private func events(_ request: ControlRequest) -> ControlResponse {
        let connection: UInt64?, filter: Filter?, given: UInt64?
        do throws(ControlResponseError) {
            connection = try number(request, "conn")
            filter = try parseFilter(request)
            given = try number(request, "after")
        } catch {
            return error.response
        }
        // Resume after the last event seen; else from `after=`; else from now on.
        let resume = request.headers["last-event-id"].flatMap { UInt64($0.trimmingSpaces) }
        let after = resume ?? given ?? store.extent.lastSeq
        return .eventStream(EventStreamCursor(after: after, filter: filter, connection: connection))
    }

    /// The records held, as a JSON Lines file (what `--jsonl` writes, without `seq`) or a HAR log:
    /// with a filter, what `--filter` would keep (matches, and their connections' open and end records).
    private func export(_ request: ControlRequest) -> ControlResponse {
        let connection: UInt64?, filter: Filter?
        do throws(ControlResponseError) {
            connection = try number(request, "conn")
            filter = try parseFilter(request)
        } catch {
            return error.response
        }
        let format = request.query["format"] ?? "jsonl"
        guard format == "jsonl" || format == "har" else { return .error(400, "format is jsonl or har") }
        var selection = filter.map(FilterSelection.init)
        var records: [TapRecord] = []
        store.forEachEntry(connection: connection) { entry in
            if selection != nil { selection!.select(entry.record, into: &records) } else { records.append(entry.record) }
        }
        let name = "wstap" + (connection.map { "-conn\($0)" } ?? "") + "." + format
        let disposition = ("Content-Disposition", "attachment; filename=\"\(name)\"")
        if format == "jsonl" {
            var writer = JSONWriter()
            for record in records { JSONLinesEncoder.encode(record, into: &writer) }
            return .complete(status: 200, contentType: "application/x-ndjson", body: writer.bytes, headers: [disposition])
        }
        do {
            return .complete(status: 200, contentType: "application/json", body: try HARSink.log(of: records, creatorVersion: version), headers: [disposition])
        } catch {
            return .error(500, "cannot write the HAR log: \(error)")
        }
    }

    // MARK: - Parameters

    func parseFilter(_ request: ControlRequest) throws(ControlResponseError) -> Filter? {
        guard let text = request.query["filter"], !text.allSatisfy({ $0 == " " }) else { return nil }
        do {
            return try Filter(parsing: text)
        } catch {
            throw ControlResponseError(.error(400, "filter: \(error.message) at column \(error.column)", column: error.column))
        }
    }

    func number(_ request: ControlRequest, _ name: String) throws(ControlResponseError) -> UInt64? {
        guard let text = request.query[name] else { return nil }
        guard let value = UInt64(text) else { throw ControlResponseError(.error(400, "\(name) must be a whole number, not '\(text)'")) }
        return value
    }
}

/// A response that ends a route early, thrown so that parameter checks compose.
struct ControlResponseError: Error {
    let response: ControlResponse
    init(_ response: ControlResponse) { self.response = response }
}

extension String {
    var trimmingSpaces: Substring {
        let start = firstIndex { $0 != " " } ?? endIndex
        let end = lastIndex { $0 != " " }.map(index(after:)) ?? start
        return self[start..<end]
    }
}
