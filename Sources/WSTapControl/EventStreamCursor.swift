import WSTapFilter
import WSTapFormats

/// Where one reader of the push stream (`GET /api/events`, Server-Sent Events) stands, and what it
/// gets next. Sans-IO: the server asks for the next piece whenever its socket can take more, so a
/// reader that stops reading costs the relay nothing — the store moves on without it.
///
/// A reader that falls more than `lagLimit` records behind the newest, or behind what the store
/// still holds, is not fed the backlog: it gets a `gap` event with the range it missed (`from`,
/// `to`, and `first_available`: what of that range `GET /api/records` can still give) and goes on
/// from the newest record. Every record event has `id: seq`, so a reader that reconnects with
/// `Last-Event-ID` resumes right after the last record it saw.
public struct EventStreamCursor: Sendable {
    /// The last seq this reader has been given or skipped past.
    public private(set) var after: UInt64
    public let filter: Filter?
    public let connection: UInt64?
    public let lagLimit: UInt64

    public init(after: UInt64, filter: Filter? = nil, connection: UInt64? = nil, lagLimit: UInt64 = 20_000) {
        self.after = after
        self.filter = filter
        self.connection = connection
        self.lagLimit = max(1, lagLimit)
    }

    /// The next piece of the stream (empty when nothing new matched), and whether more is ready now.
    public mutating func next(from store: RecordStore, limit: Int = 256) -> (text: [UInt8], more: Bool) {
        var text: [UInt8] = []
        let extent = store.extent
        if after < extent.lastSeq && extent.lastSeq - after > lagLimit {
            // Too far behind: skip to the newest; the range may still be fetched from the store.
            let from = after + 1
            after = extent.lastSeq
            Self.gap(from: from, to: after, firstAvailable: max(from, extent.firstSeq), into: &text)
            return (text, false)
        }
        if extent.startsAfter(after) {
            // What the reader would read next was dropped from the store: say so, go on with the rest.
            Self.gap(from: after + 1, to: extent.firstSeq - 1, firstAvailable: extent.firstSeq, into: &text)
            after = extent.firstSeq - 1
        }
        let page = store.entries(after: after, limit: limit, filter: filter, connection: connection, scanLimit: max(limit, 4096))
        for entry in page.entries { Self.event("record", id: entry.seq, data: entry.json, into: &text) }
        after = max(after, page.scannedThrough)
        return (text, after < page.extent.lastSeq)
    }

    static func gap(from: UInt64, to: UInt64, firstAvailable: UInt64, into text: inout [UInt8]) {
        var writer = JSONWriter()
        writer.beginObject()
        writer.key("from"); writer.integer(from)
        writer.key("to"); writer.integer(to)
        writer.key("first_available"); writer.integer(firstAvailable)
        writer.endObject()
        event("gap", id: to, data: writer.bytes, into: &text)
    }

    /// One event; `data` is one line of JSON (the encoder escapes every line end inside strings).
    static func event(_ name: String, id: UInt64, data: [UInt8], into text: inout [UInt8]) {
        text += Array("id: \(id)\nevent: \(name)\ndata: ".utf8)
        text += data
        text += [0x0A, 0x0A]
    }
}
