import NIOCore
import WSTapDissect
import WSTapFilter
import WSTapRules
import WSTapWire

/// How rules change a proxy's connections: `wstap proxy --rule/--rules`, `--compression`,
/// `--hold-timeout`, `--hold-limit`.
public struct ChangeSettings: Sendable {
    /// RFC 7692 and edits (docs/rules.md, "Compression").
    public enum Compression: String, Sendable, CaseIterable {
        /// Byte-exact until a change of a compressed message puts the peers' windows out of step; that
        /// direction is compressed by wstap from there on.
        case keep
        /// permessage-deflate is taken out of the client's offer: nothing is compressed.
        case strip
        /// Every compressed message is inflated and compressed again by wstap, changed or not.
        case reencode
    }

    public var rules: RuleBook
    public var compression = Compression.keep
    /// How long `hold` keeps a message the control API has not decided on before sending it on.
    public var holdTimeout: Duration = .seconds(30)
    /// Most payload bytes one direction may keep: a message being gathered for the rules, plus the
    /// messages queued behind a hold. A message past it passes as it comes, unchanged.
    public var holdLimit = 16 << 20
    /// How long a message handed to an exec hook waits for its verdict.
    public var hookTimeout: Duration = .seconds(5)
    /// What becomes of a message whose hook did not answer (slow, dead, garbage): `--exec-fail`.
    public var hookFailure = HookFailure.open
    /// Random bits for mask keys and rule probabilities (injected: tests and fuzzing pass a seeded one).
    public var random: @Sendable () -> UInt64

    public enum HookFailure: String, Sendable, CaseIterable {
        /// It goes on as the rules left it.
        case open
        /// It is dropped.
        case closed
    }

    public init(rules: RuleBook, random: @escaping @Sendable () -> UInt64 = { UInt64.random(in: .min ... .max) }) {
        self.rules = rules
        self.random = random
    }

    /// The commands of every `exec` in `rules`, in order, each once: the hooks a proxy starts.
    public static func hookCommands(in rules: [Rule]) -> [String] {
        var commands: [String] = []
        for rule in rules {
            for case .exec(let command) in rule.actions where !commands.contains(command) { commands.append(command) }
        }
        return commands
    }
}

/// One direction of a relay with rules loaded: it reads the frames, gathers each data message whole,
/// lets the rules decide, and sends on the message's own bytes or what the rules made of it.
///
/// What it guarantees (docs/rules.md): a message no rule changed leaves with its own frames, masks and
/// bits; an edited one is framed anew (as many frames as it came in unless `fragment` says otherwise,
/// text cut on character boundaries, fresh mask keys); control frames overtake a held message, but a
/// close waits until everything held before it has gone; frames it cannot follow (a protocol violation)
/// end the changes for the direction, whose bytes then pass as they come.
struct ChangingPipe {
    let direction: Direction
    private let settings: ChangeSettings
    private let connection: UInt64
    private let facts: ConnectionFacts
    private let payloadCap: Int
    private let deflate: PerMessageDeflate?
    /// The sender's permessage-deflate has no context takeover: each message stands alone.
    private let resetsContext: Bool
    private var inflater: Inflater?
    /// Set once wstap compresses this direction itself; from then on every compressed message is.
    private var deflater: Deflater?
    private var reencoding = false

    /// Stream offset of the next byte to parse, and of the first byte of the frame being parsed.
    private var offset: UInt64
    private var frameStart: UInt64 = 0
    /// Bytes of a header the parser has taken but not completed.
    private var partialHeader: [UInt8] = []
    private var parser = FrameParser()
    private var frame: FrameInProgress?
    private var message: MessageInProgress?
    /// Messages (and a close) waiting behind a hold, in order.
    private var queue = CircularBuffer<Queued>()
    private var queuedBytes = 0
    /// After a violation: everything passes as it comes.
    private var stopped = false
    /// The sender closed its side (FIN): the receiver's side is shut too, nothing more can go.
    private var inputFinished = false
    /// A close frame has been sent or queued to the receiver: no message may follow it (RFC 6455 §5.5.1).
    private var closeCommitted = false
    /// The rule whose `close` sent wstap's own close frame this way: the sender's close is then the reply
    /// to it and goes no further (the receiver has its close already), nor does anything after it.
    private var ownClose: String?
    /// wstap's own messages waiting for the message streaming through to end.
    private var pendingOwn: [OwnMessage] = []
    /// Tickets of the messages this pipe handed to exec hooks (the low bit says the direction).
    private var hookTickets: UInt64 = 0
    /// Ids of the messages this pipe held (the low bit says the direction, as for tickets).
    private var holdIDs: UInt64 = 0
    /// This pipe's copy of the rules in force, and the book's generation it was read at (`RuleBook.refresh`).
    private var engine: RuleEngine
    private var engineGeneration = UInt64.max  // never a generation: the first refresh reads the book

    private struct FrameInProgress {
        var header: FrameHeader
        var start: UInt64
        /// Header and payload as they came (not kept while a message streams through).
        var raw: [UInt8]
        /// Unmasked payload.
        var payload: [UInt8]
    }

    private struct MessageInProgress {
        var start: UInt64
        var opcode: Opcode
        var compressed: Bool
        var masked: Bool
        /// Wire bytes of its complete frames, in order.
        var raw: [UInt8] = []
        /// Unmasked payload as sent (compressed when compressed).
        var wirePayload: [UInt8] = []
        var fragmentSizes: [Int] = []
        /// Past the hold limit: its bytes go on as they come and no rule sees it.
        var streaming = false
        /// While streaming a compressed message on a re-encoded direction: frames sent so far.
        var transcodedFrames = 0
    }

    private struct Queued {
        var bytes: [UInt8]
        var isClose: Bool
        var enqueued: Timestamp
        /// When it may go (nil: as soon as everything before it has).
        var releaseAt: Timestamp?
        /// Why it waits: "delay", "hold" or "exec"; nil for messages queued only behind another.
        var reason: String?
        var change: ChangeRecord?
        /// Set while an exec hook decides: `bytes` is empty until the verdict is carried out.
        var hook: HookWait?
        /// A message behind one a hook decides: carried out once it reaches the head (`bytes` empty).
        var deferred: Undecided?
        /// A message a `hold` keeps until the control API or --hold-timeout lets it go (`bytes` empty).
        var held: Held?

        /// The message not framed yet: a hook or a person decides it, or it waits behind one that is.
        var undecided: Undecided? { hook?.undecided ?? held?.undecided ?? deferred }
        /// What it counts against --hold-limit.
        var weight: Int { bytes.count + (undecided?.message.raw.count ?? 0) }
        /// Where it starts in the sender's stream.
        func start(or fallback: UInt64) -> UInt64 { undecided?.message.start ?? change?.offset ?? fallback }
    }

    /// A message the rules have decided on but that is not framed yet: framing waits until everything
    /// before it is, so a direction compressed by wstap compresses in the order messages leave.
    private struct Undecided {
        var outcome: RuleOutcome
        var message: MessageInProgress
        var received: MessageRecord
    }

    /// A message waits for a hook's verdict, or behind one: later messages are framed only after them.
    private var decisionPending: Bool { !queue.isEmpty && queue.contains { $0.undecided != nil } }

    /// A held message: framed only once it is let go, so an edit is framed (and compressed) in the
    /// order messages leave, and later messages of the sender wait behind it.
    private struct Held {
        var id: UInt64
        /// What the rules made of it, without the hold.
        var undecided: Undecided
        /// Given by the control API; nil until then (and at --hold-timeout: forwarded).
        var decision: HoldDecision?
    }

    /// A message handed to an exec hook, waiting in its place in the queue for the verdict.
    private struct HookWait {
        var ticket: UInt64
        var command: String
        /// The rule whose `exec` asked.
        var rule: String
        /// What the rules made of the message, without the exec.
        var undecided: Undecided
        var answer: HookAnswer?
    }

    init(direction: Direction, start: WebSocketStart, connection: UInt64, settings: ChangeSettings, payloadCap: Int) {
        self.direction = direction
        self.settings = settings
        self.connection = connection
        self.payloadCap = payloadCap
        facts = ConnectionFacts(url: start.url, subprotocol: start.subprotocol)
        engine = RuleEngine(rules: [])
        settings.rules.refresh(&engine, seen: &engineGeneration)
        offset = direction == .clientToServer ? start.clientOffset : start.serverOffset
        deflate = start.deflate
        resetsContext = start.deflate?.resetsContext(fromClient: direction == .clientToServer) ?? false
        if start.deflate != nil { inflater = Inflater() }
        if settings.compression == .reencode, start.deflate != nil {
            reencoding = true
            deflater = makeDeflater()
        }
    }

    /// The earliest time a queued message may go, for the shell's wake-up.
    var nextWake: Timestamp? { queue.first?.releaseAt }

    // MARK: - Input

    mutating func received(_ buffer: ByteBuffer, at now: Timestamp, into out: inout PipeOutput) {
        guard ownClose != nil else { return parse(buffer, at: now, into: &out) }
        // The receiver has wstap's close: nothing of the sender's may follow it, whole messages or not
        // (a message past the hold limit, bytes after a violation). Their records still go.
        var discarded = PipeOutput()
        parse(buffer, at: now, into: &discarded)
        out.records += discarded.records
    }

    private mutating func parse(_ buffer: ByteBuffer, at now: Timestamp, into out: inout PipeOutput) {
        // A method, not the closure's body: inside a closure that captures `self` every call of a
        // non-mutating method would copy the whole pipe.
        buffer.withUnsafeReadableBytes { raw in parse(raw, of: buffer, at: now, into: &out) }
    }

    private mutating func parse(_ raw: UnsafeRawBufferPointer, of buffer: ByteBuffer, at now: Timestamp, into out: inout PipeOutput) {
        var index = 0
        // Bytes of this read that leave as they came (messages no rule touched), not copied yet:
        // they go as one slice of the read, before anything else is sent.
        var untouched: Range<Int>?
        func sendUntouched() {
            guard let range = untouched else { return }
            untouched = nil
            out.send(buffer.getSlice(at: buffer.readerIndex + range.lowerBound, length: range.count)!)
        }
        // After an abort nothing more goes anywhere: the connections are being reset.
        while !stopped && out.abort == nil {
            let headerStartsHere = !parser.isInsideFrame
            if headerStartsHere { frameStart = offset }
            let before = index
            // nil once the read is used up; a frame end still owed comes before that.
            guard let event = parser.next(raw, index: &index) else {
                offset += UInt64(index - before)
                // The start of a header the next read completes: kept, in case the sender stops here.
                if frame == nil && index > before { partialHeader.append(contentsOf: raw[before..<index]) }
                break
            }
            offset += UInt64(index - before)
            if case .header(let header) = event, headerStartsHere, canTakeWhole(header), raw.count - index >= Int(header.payloadLength) {
                // The usual case: a one-frame message, whole in this read. Decided on in place.
                let payloadStart = index
                while let next = parser.next(raw, index: &index), next != .frameEnd {}
                offset += UInt64(index - payloadStart)
                let frameBytes = UnsafeRawBufferPointer(rebasing: raw[before..<index])
                let payloadBytes = UnsafeRawBufferPointer(rebasing: raw[payloadStart..<index])
                if let decided = decideWhole(header, payload: payloadBytes, now: now) {
                    sendUntouched()
                    let message = MessageInProgress(start: frameStart, opcode: header.opcode, compressed: false, masked: header.masked,
                                                    raw: Array(frameBytes), wirePayload: decided.received.payload, fragmentSizes: [payloadBytes.count])
                    carryOut(decided.outcome, message: message, received: decided.received, now: now, into: &out)
                } else {
                    untouched = (untouched?.lowerBound ?? before)..<index
                }
                continue
            }
            sendUntouched()
            switch event {
            case .header(let header):
                partialHeader.removeAll()
                if let reason = violation(header) {
                    stop(reason: reason, at: frameStart, now: now, into: &out)
                    out.send(header.encoded())
                } else {
                    began(header, at: frameStart, now: now, into: &out)
                }
            case .payload(let range, let offsetInPayload):
                payload(UnsafeRawBufferPointer(rebasing: raw[range]), at: offsetInPayload, now: now, into: &out)
            case .frameEnd:
                frameEnded(now: now, into: &out)
            }
        }
        sendUntouched()
        if stopped && index < raw.count {
            out.send(UnsafeRawBufferPointer(rebasing: raw[index...]))
            offset += UInt64(raw.count - index)
        }
    }

    /// Whether a frame whose header was just read can be decided on in place once it is whole in the
    /// read: an uncompressed one-frame data message, with nothing held or half-read before it (so it
    /// would be sent at once), within --hold-limit. Everything else goes the long way, frame by frame.
    private func canTakeWhole(_ header: FrameHeader) -> Bool {
        header.fin && !header.rsv1 && !header.rsv2 && !header.rsv3 && (header.opcode == .text || header.opcode == .binary)
            && message == nil && frame == nil && queue.isEmpty && ownClose == nil && pendingOwn.isEmpty
            && header.payloadLength <= UInt64(settings.holdLimit)
    }

    /// The rules' decision on a whole one-frame message; nil when no rule applies, so its bytes go as they came.
    private mutating func decideWhole(_ header: FrameHeader, payload bytes: UnsafeRawBufferPointer, now: Timestamp) -> (outcome: RuleOutcome, received: MessageRecord)? {
        var payload = Array(bytes)
        if let key = header.maskKey {
            payload.withUnsafeMutableBytes { Masking.apply(key: key, offset: 0, to: $0) }
        }
        let received = receivedRecord(header.opcode, frames: 1, wireLength: payload.count, compressed: false, plain: payload, at: frameStart)
        let outcome = decide(received, now: now)
        return outcome.applied.isEmpty ? nil : (outcome, received)
    }

    /// The sender closed its side: what is held goes now, and what was half-read goes as it came.
    mutating func inputEnded(at now: Timestamp, into out: inout PipeOutput) {
        inputFinished = true
        releaseAll(at: now, note: "released early: its sender closed the connection", into: &out)
        // What was half-read goes as it came, unless the receiver has wstap's close (nothing may follow),
        // or it is compressed and wstap compresses the direction itself: its bytes refer to the sender's
        // window, which the receiver does not have, so they would only fail to inflate there.
        if let message, message.compressed && reencoding && !message.streaming {
            note(.heldNotSent, at: message.start, "a compressed message cut short by the \(direction.sender)'s FIN was not passed on: wstap compresses this direction itself, so its bytes would not inflate at the \(direction.receiver)", now: now, into: &out)
        } else if ownClose == nil {
            if let message, !message.streaming { out.send(message.raw) }
            if let frame, !(message?.streaming ?? false) || frame.header.opcode.isControl { out.send(frame.raw) }
            out.send(partialHeader)
        }
        partialHeader = []
        message = nil
        frame = nil
        let pending = pendingOwn
        pendingOwn = []
        for own in pending { send(own, now: now, into: &out) }
    }

    /// The connection ended before what is queued could go: each held message's record says it was
    /// not sent, and one diagnostic counts them all.
    mutating func abandon(at now: Timestamp, into out: inout PipeOutput) {
        for own in pendingOwn {
            out.record(TapRecord(connection: connection, timestamp: now, body: .change(ChangeRecord(
                direction: direction, offset: offset, rules: [own.rule], actions: [own.action], result: .dropped, sent: [],
                notes: ["not sent: the connection ended while a message streamed through ahead of it"]))))
        }
        pendingOwn = []
        guard !queue.isEmpty else { return }
        let count = queue.count, bytes = queuedBytes
        let first = queue.first?.start(or: offset) ?? offset
        while !queue.isEmpty {
            let item = queue.removeFirst()
            // Undecided: what the rules made of it, which never left.
            if let wait = item.hook {
                notSent(wait.undecided.outcome, at: wait.undecided.message.start, since: item.enqueued,
                        "not sent: the connection ended while hook '\(wait.command)' decided", now: now, into: &out)
                continue
            }
            if let held = item.held {
                notSent(held.undecided.outcome, at: held.undecided.message.start, since: item.enqueued,
                        "not sent: the connection ended while it was held (hold \(held.id))", now: now, into: &out)
                continue
            }
            if let deferred = item.deferred {
                // A message no rule matched has no change record; the diagnostic below counts it.
                if !deferred.outcome.applied.isEmpty {
                    notSent(deferred.outcome, at: deferred.message.start, since: item.enqueued,
                            "not sent: the connection ended while it waited behind a message a hook decided", now: now, into: &out)
                }
                continue
            }
            guard var change = item.change else { continue }
            change.result = .dropped
            change.sent = []
            change.heldNanoseconds = now.nanoseconds - item.enqueued.nanoseconds
            change.notes.append("not sent: the connection ended while it was held")
            out.record(TapRecord(connection: connection, timestamp: now, body: .change(change)))
        }
        queuedBytes = 0
        note(.heldNotSent, at: first, "\(count) held message\(count == 1 ? "" : "s") (\(bytes) bytes) never went on: the connection ended first", now: now, into: &out)
    }

    private func notSent(_ outcome: RuleOutcome, at start: UInt64, since: Timestamp, _ note: String, now: Timestamp, into out: inout PipeOutput) {
        out.record(TapRecord(connection: connection, timestamp: now, body: .change(ChangeRecord(
            direction: direction, offset: start, rules: outcome.applied.map(\.rule), actions: outcome.applied.flatMap(\.descriptions),
            result: .dropped, sent: [], heldNanoseconds: now.nanoseconds - since.nanoseconds, notes: [note]))))
    }

    /// Time passed: queued messages whose time has come go.
    mutating func tick(at now: Timestamp, into out: inout PipeOutput) {
        release(at: now, into: &out)
    }

    // MARK: - Frames

    private func violation(_ header: FrameHeader) -> String? {
        if header.rsv2 || header.rsv3 { return "RSV2 or RSV3 set" }
        if header.rsv1 && (deflate == nil || header.opcode.isControl || header.opcode == .continuation) { return "RSV1 where no extension allows it" }
        switch header.opcode {
        case .continuation: if message == nil { return "continuation frame with no message open" }
        case .text, .binary: if message != nil { return "new data frame inside a fragmented message" }
        case .close, .ping, .pong:
            if !header.fin || header.payloadLength > 125 { return "fragmented or oversized control frame" }
        default: return "reserved opcode \(header.opcode.rawValue)"
        }
        return nil
    }

    private mutating func began(_ header: FrameHeader, at start: UInt64, now: Timestamp, into out: inout PipeOutput) {
        if header.opcode.isControl {
            frame = FrameInProgress(header: header, start: start, raw: header.encoded(), payload: [])
            return
        }
        if header.opcode != .continuation {
            message = MessageInProgress(start: start, opcode: header.opcode, compressed: header.rsv1, masked: header.masked)
        }
        let streaming = message!.streaming
        frame = FrameInProgress(header: header, start: start, raw: streaming ? [] : header.encoded(), payload: [])
        if streaming && !transcoding { out.send(header.encoded()) }
    }

    private var transcoding: Bool { reencoding && (message?.compressed ?? false) }

    private mutating func payload(_ bytes: UnsafeRawBufferPointer, at offsetInPayload: UInt64, now: Timestamp, into out: inout PipeOutput) {
        guard var current = frame else { return }
        if let message, message.streaming, !current.header.opcode.isControl {
            frame = nil
            stream(bytes, header: current.header, at: offsetInPayload, into: &out)
            frame = current
            return
        }
        frame = nil  // let go of the copy in `self`, so appending does not copy the arrays
        current.raw.append(contentsOf: bytes)
        let from = current.payload.count
        current.payload.append(contentsOf: bytes)
        if let key = current.header.maskKey {
            current.payload.withUnsafeMutableBytes { Masking.apply(key: key, offset: offsetInPayload, to: UnsafeMutableRawBufferPointer(rebasing: $0[from...])) }
        }
        frame = current
        if !current.header.opcode.isControl, let message, message.wirePayload.count + current.payload.count > settings.holdLimit {
            startStreaming(now: now, into: &out)
        }
    }

    private mutating func frameEnded(now: Timestamp, into out: inout PipeOutput) {
        guard let ended = frame else { return }
        frame = nil
        if ended.header.opcode.isControl {
            control(ended, now: now, into: &out)
            return
        }
        guard var current = message else { return }
        message = nil
        if current.streaming {
            if ended.header.fin { finishStreaming(current, now: now, into: &out) } else { message = current }
            return
        }
        // The first frame's arrays become the message's: no copy for the usual one-frame message.
        if current.fragmentSizes.isEmpty {
            current.raw = ended.raw
            current.wirePayload = ended.payload
        } else {
            current.raw += ended.raw
            current.wirePayload += ended.payload
        }
        current.fragmentSizes.append(ended.payload.count)
        if ended.header.fin {
            complete(current, now: now, into: &out)
        } else {
            message = current
        }
    }

    // MARK: - Messages

    private mutating func complete(_ message: MessageInProgress, now: Timestamp, into out: inout PipeOutput) {
        if let rule = ownClose {
            absorb(message.start, isClose: false, rule: rule, now: now, into: &out)
            return
        }
        var plain = message.wirePayload
        if message.compressed {
            let inflated = inflate(message.wirePayload, limit: settings.holdLimit)
            let inflates = if case .failed = inflated { false } else { true }
            if inflates && !reencoding, let inflater, !inflater.endsOnBlockBoundary {
                // The receiver is left where the sender is, inside a block: nothing wstap compresses
                // could follow, so no rule may change this direction from here on.
                sendInOrder(message.raw, isClose: false, now: now, into: &out)
                stop(reason: "a compressed message does not end between deflate blocks (RFC 7692 §7.2.1 asks the sender to flush)",
                     at: message.start, now: now, into: &out)
                return
            }
            switch inflated {
            case .plain(let inflated):
                plain = inflated
            case .failed:
                // The receiver cannot inflate it either; what it does next is its own business.
                sendInOrder(message.raw, isClose: false, now: now, into: &out)
                stop(reason: "a compressed message does not inflate", at: message.start, now: now, into: &out)
                return
            case .tooLarge(let recompressed):
                note(.tooLargeToChange, at: message.start,
                     "message of \(message.wirePayload.count) compressed bytes inflates past --hold-limit (\(settings.holdLimit) bytes): rules not applied",
                     now: now, into: &out)
                if recompressed == nil && decisionPending && !resetsContext {
                    // Messages before it still wait for a hook, and what they become decides whether this
                    // direction is compressed by wstap; this one cannot wait (it is not kept whole). So
                    // they are settled now, and if that re-encodes the direction, its own bytes would
                    // not inflate at the receiver: wstap gives up on the direction and says so.
                    releaseAll(at: now, note: "released early: a message past --hold-limit follows", into: &out)
                    if reencoding {
                        sendInOrder(message.raw, isClose: false, now: now, into: &out)
                        stop(reason: "a compressed message past --hold-limit arrived while a hook decided, and the direction is re-encoded", at: message.start, now: now, into: &out)
                        return
                    }
                }
                let bytes = recompressed.map { frames(opcode: message.opcode, pieces: [$0[...]], wire: $0, compressed: true, masked: message.masked) }
                sendInOrder(bytes ?? message.raw, isClose: false, now: now, into: &out)
                return
            }
        }
        let received = receivedRecord(message.opcode, frames: message.fragmentSizes.count, wireLength: message.wirePayload.count,
                                      compressed: message.compressed, plain: plain, at: message.start)
        let outcome = decide(received, now: now)
        guard !outcome.applied.isEmpty || reencoding && message.compressed || decisionPending else {
            sendInOrder(message.raw, isClose: false, now: now, into: &out)
            return
        }
        carryOut(outcome, message: message, received: received, now: now, into: &out)
    }

    /// A whole data message as the rules see it: its payload inflated, the whole of it, text checked.
    private func receivedRecord(_ opcode: Opcode, frames: Int, wireLength: Int, compressed: Bool, plain: [UInt8], at start: UInt64) -> MessageRecord {
        MessageRecord(direction: direction, opcode: opcode, frames: frames, wireLength: UInt64(wireLength), length: UInt64(plain.count),
                      compressed: compressed, payload: plain, truncated: false, closeCode: nil, closeReason: nil, inflateFailed: false,
                      incomplete: false, offset: start,
                      textValidity: opcode == .text ? (UTF8Validator.isValid(plain) ? .valid : .invalid) : .unchecked)
    }

    private mutating func control(_ frame: FrameInProgress, now: Timestamp, into out: inout PipeOutput) {
        let isClose = frame.header.opcode == .close
        if let rule = ownClose {
            absorb(frame.start, isClose: isClose, rule: rule, now: now, into: &out)
            return
        }
        var record = MessageRecord(direction: direction, opcode: frame.header.opcode, frames: 1, wireLength: UInt64(frame.payload.count),
                                   length: UInt64(frame.payload.count), compressed: false, payload: frame.payload, truncated: false,
                                   closeCode: nil, closeReason: nil, inflateFailed: false, incomplete: false, offset: frame.start)
        if isClose, frame.payload.count >= 2 {
            record.closeCode = UInt16(frame.payload[0]) << 8 | UInt16(frame.payload[1])
            record.closeReason = String(validating: frame.payload[2...], as: UTF8.self)
        }
        let outcome = decide(record, now: now)
        if outcome.applied.isEmpty {
            // Pings and pongs overtake held messages; a close waits for them (it ends the direction).
            if isClose { sendInOrder(frame.raw, isClose: true, now: now, into: &out) } else { out.send(frame.raw) }
            return
        }
        let asReceived = MessageInProgress(start: frame.start, opcode: frame.header.opcode, compressed: false, masked: frame.header.masked,
                                           raw: frame.raw, wirePayload: frame.payload, fragmentSizes: [frame.payload.count])
        carryOut(outcome, message: asReceived, received: record, now: now, into: &out)
    }

    private mutating func decide(_ message: MessageRecord, now: Timestamp) -> RuleOutcome {
        settings.rules.refresh(&engine, seen: &engineGeneration)
        guard !engine.rules.isEmpty else { return RuleOutcome(payload: message.payload) }
        let random = settings.random
        return engine.apply(to: message, connectionID: connection, connection: facts) { Double(random() >> 11) / Double(1 << 53) }
    }

    /// Sends what the rules made of a message (or queues it), with the record that says so first.
    /// - Parameter held: how long it waited for a hook's verdict, for its record.
    private mutating func carryOut(_ outcome: RuleOutcome, message: MessageInProgress, received: MessageRecord, held: Int64? = nil,
                                   now: Timestamp, into out: inout PipeOutput) {
        if let exec = Self.hook(in: outcome) {
            var rest = outcome
            rest.effects.removeAll { if case .exec = $0 { true } else { false } }
            // A message the rules drop, close on or abort goes no further: there is nothing to ask.
            let ends = rest.dropped || rest.effects.contains { if case .close = $0 { true } else if case .abort = $0 { true } else { false } }
            if !ends {
                askHook(exec.command, rule: exec.rule, outcome: rest, message: message, received: received, now: now, into: &out)
                return
            }
            return carryOut(rest, message: message, received: received, held: held, now: now, into: &out)
        }
        if outcome.effects.contains(where: { if case .hold = $0 { true } else { false } }) {
            // Everything else the rules asked for happens when it is let go, from its place in the queue.
            var rest = outcome
            rest.effects.removeAll { if case .hold = $0 { true } else { false } }
            let ends = rest.dropped || rest.effects.contains { if case .close = $0 { true } else if case .abort = $0 { true } else { false } }
            if !ends { return hold(rest, message: message, received: received, now: now, into: &out) }
            return carryOut(rest, message: message, received: received, held: held, now: now, into: &out)
        }
        if decisionPending && !(message.opcode.isControl && message.opcode != .close) {
            // An earlier message waits for a hook: this one is framed after it is, in order, so a
            // direction that the verdict re-encodes compresses its messages in the order they leave.
            enqueue(Queued(bytes: [], isClose: message.opcode == .close, enqueued: now, releaseAt: nil, reason: nil, change: nil,
                           deferred: Undecided(outcome: outcome, message: message, received: received)), now: now, into: &out)
            return
        }
        var copies = outcome.dropped ? 0 : 1
        var fragments: Int?
        var fragmentSize: Int?
        var uncompressed = false
        var waitUntil: Timestamp?
        var reason: String?
        var marks: [String] = []
        var corruptions: Set<RuleAction.Corruption> = []
        var notes = outcome.skipped.map { "\($0.rule): \($0.action) skipped: \($0.reason)" } + outcome.notes
        // wstap's own messages, in the order the actions came: this direction's go through this pipe,
        // the other direction's through its pipe (`PipeOutput.forOtherDirection`).
        // Read from each applied rule, so every own message names the rule that asked for it.
        var own: [OwnMessage] = []
        var closing = false
        for applied in outcome.applied {
            for action in applied.actions {
                switch action {
                case .inject(let side, let injected):
                    guard let (opcode, payload) = injected.message else { continue }
                    for target in side.directions {
                        own.append(OwnMessage(direction: target, opcode: opcode, payload: payload, rule: applied.rule, action: action.description))
                    }
                case .close(let code, let reason, let side):
                    closing = true
                    // The parser allows at most 123 bytes of reason (RFC 6455 §5.5).
                    let payload = [UInt8(code >> 8), UInt8(code & 0xFF)] + Array(reason.utf8)
                    for target in side.directions {
                        own.append(OwnMessage(direction: target, opcode: .close, payload: payload, rule: applied.rule, action: action.description))
                    }
                default: continue
                }
            }
        }
        for effect in outcome.effects {
            switch effect {
            case .inject, .close: continue  // gathered above
            case .duplicate: if copies > 0 { copies += 1 }
            case .fragment(let count, let size): fragments = count; fragmentSize = size
            case .uncompressed: uncompressed = true
            case .delay(let ms, let jitter):
                let spread = jitter > 0 ? Int(settings.random() % UInt64(2 * jitter + 1)) - jitter : 0
                let at = now.adding(.milliseconds(max(0, ms + spread)))
                waitUntil = max(waitUntil ?? at, at)
                reason = reason ?? "delay"
            case .hold: continue  // taken out before this point (`hold`)
            case .mark(let tag): marks.append(tag)
            case .corrupt(let kind):
                if kind == .utf8 && message.opcode != .text {
                    notes.append("corrupt utf8 skipped: not a text message")
                } else {
                    corruptions.insert(kind)
                }
            case .abort:
                // Nothing of the message goes on: both connections are reset once what went before is written.
                out.record(TapRecord(connection: connection, timestamp: now, body: .change(ChangeRecord(
                    direction: direction, offset: message.start, rules: outcome.applied.map(\.rule),
                    actions: outcome.applied.flatMap(\.descriptions), result: .aborted, sent: [], heldNanoseconds: held, marks: marks, notes: notes))))
                out.abort = outcome.applied.last?.rule ?? "abort"
                return
            default: break  // edits (already in the payload) and `exec` (asked before this point)
            }
        }
        if closing {
            // The message that asked for the close goes no further: wstap's close frames take its place.
            // Like a dropped one, a compressed trigger the receiver never sees leaves its window behind.
            if message.compressed && !resetsContext { startReencoding(at: message.start, now: now, into: &out) }
            let to = own.filter { $0.opcode == .close }.map { $0.direction.receiver }
            notes.append("not sent on: wstap sends its own close to the \(to.joined(separator: " and "))")
            out.record(TapRecord(connection: connection, timestamp: now, body: .change(ChangeRecord(
                direction: direction, offset: message.start, rules: outcome.applied.map(\.rule),
                actions: outcome.applied.flatMap(\.descriptions), result: .closed, sent: [], heldNanoseconds: held, marks: marks, notes: notes))))
            dispatch(own, now: now, into: &out)
            return
        }
        let isControl = message.opcode.isControl
        let compressedIn = message.compressed
        // `corrupt utf8` ends the text with a byte no UTF-8 has; it is an edit of the payload.
        var payload = outcome.payload
        if corruptions.contains(.utf8) { payload.append(0xFF) }
        let edited = outcome.edited || corruptions.contains(.utf8)
        var bytes: [UInt8] = []
        var sent: [SentMessage] = []
        let refragment = !isControl && (fragments != nil || fragmentSize != nil)
        for copy in 0..<copies {
            // Its own bytes while nothing about them changed; framed anew otherwise.
            if copy == 0 && !edited && !uncompressed && !refragment && corruptions.isEmpty && !(reencoding && compressedIn) {
                bytes += message.raw
                sent.append(SentMessage(opcode: message.opcode, frames: message.fragmentSizes.count, length: UInt64(outcome.payload.count),
                                        wireLength: UInt64(message.wirePayload.count), compressed: compressedIn,
                                        payload: preview(outcome.payload, message.opcode), truncated: outcome.payload.count > payloadCap))
                continue
            }
            var wire = payload
            var compressOut = false
            if compressedIn && !uncompressed {
                if !edited && !reencoding && copy == 0 {
                    wire = message.wirePayload  // only framed anew: the compressed bytes stay
                } else {
                    startReencoding(at: message.start, now: now, into: &out)
                    wire = deflater!.compressMessage(payload)
                }
                compressOut = true
            }
            let count = isControl ? 1 : fragmentCount(fragments: fragments, size: fragmentSize, wire: wire.count, original: message.fragmentSizes.count)
            let pieces = split(wire, into: count, text: message.opcode == .text && !compressOut,
                               like: wire.count == message.wirePayload.count ? message.fragmentSizes : nil)
            let framed = frames(opcode: message.opcode, pieces: pieces, wire: wire, compressed: compressOut,
                                masked: corruptions.contains(.mask) ? !message.masked : message.masked, longLengths: corruptions.contains(.length))
            if bytes.isEmpty { bytes = framed } else { bytes += framed }
            sent.append(SentMessage(opcode: message.opcode, frames: pieces.count, length: UInt64(payload.count), wireLength: UInt64(wire.count),
                                    compressed: compressOut, payload: preview(payload, message.opcode), truncated: payload.count > payloadCap))
        }
        // A compressed message that never reached the receiver, or reached it twice or uncompressed,
        // leaves its window out of step with the sender's: compress from the next message on.
        if compressedIn && !resetsContext && (outcome.dropped || copies > 1 || uncompressed) {
            startReencoding(at: message.start, now: now, into: &out)
        }
        // What the rules did: compressing anew on a re-encoded direction is not an edit (its
        // `reencoding` diagnostic says so once), and `sent` shows the bytes that left.
        if corruptions.contains(.mask) {
            notes.append(message.masked ? "sent unmasked on purpose (corrupt mask): a server must fail the connection" : "sent masked on purpose (corrupt mask): a client must fail the connection")
        }
        if corruptions.contains(.length) { notes.append("lengths written in 8 bytes on purpose (corrupt length): RFC 6455 §5.2 asks for the shortest form") }
        if corruptions.contains(.utf8) { notes.append("0xFF appended on purpose (corrupt utf8): the text is no longer UTF-8") }
        let changedBytes = edited || uncompressed || refragment || copies > 1 || !corruptions.isEmpty
        let changed = outcome.applied.isEmpty ? nil : ChangeRecord(
            direction: direction, offset: message.start, rules: outcome.applied.map(\.rule),
            actions: outcome.applied.flatMap(\.descriptions),
            result: outcome.dropped ? .dropped : changedBytes ? .edited : .forwarded, sent: sent, heldNanoseconds: held, marks: marks, notes: notes)
        if outcome.dropped {
            if let changed { out.record(TapRecord(connection: connection, timestamp: now, body: .change(changed))) }
            dispatch(own, now: now, into: &out)
            return
        }
        let isClose = message.opcode == .close
        // Nothing may follow a close: what is injected this way goes before it.
        if isClose { dispatch(own.filter { $0.direction == direction }, now: now, into: &out) }
        defer { dispatch(isClose ? own.filter { $0.direction != direction } : own, now: now, into: &out) }
        if let waitUntil {
            enqueue(Queued(bytes: bytes, isClose: isClose, enqueued: now, releaseAt: waitUntil, reason: reason, change: changed), now: now, into: &out)
        } else if isControl && !isClose {
            if let changed { out.record(TapRecord(connection: connection, timestamp: now, body: .change(changed))) }
            out.send(bytes)
        } else {
            sendInOrder(bytes, isClose: isClose, now: now, change: changed, into: &out)
        }
    }

    private mutating func startReencoding(at start: UInt64, because why: String = "a rule changed a compressed message", now: Timestamp,
                                          into out: inout PipeOutput) {
        if deflater == nil { deflater = makeDeflater() }
        guard !reencoding, !resetsContext else { return }
        reencoding = true
        out.record(TapRecord(connection: connection, timestamp: now, body: .diagnostic(Diagnostic(
            code: .reencoding, direction: direction, offset: start,
            detail: "\(why); wstap compresses the \(direction.sender)'s later messages itself (--compression keep)"))))
    }

    private func makeDeflater() -> Deflater {
        let bits = direction == .clientToServer ? deflate?.clientMaxWindowBits : deflate?.serverMaxWindowBits
        return Deflater(windowBits: bits ?? 15, noContextTakeover: resetsContext)
    }

    private enum Inflated {
        case plain([UInt8])
        /// It does not inflate: the receiver cannot inflate it either.
        case failed
        /// It inflates past the hold limit; when the direction is re-encoded, what wstap compressed
        /// of it piece by piece (it is never whole in memory).
        case tooLarge(recompressed: [UInt8]?)
    }

    /// Inflates a whole message, always to its end, so the window stays in step with the sender's.
    private mutating func inflate(_ wire: [UInt8], limit: Int) -> Inflated {
        guard let inflater else { return .failed }
        var plain: [UInt8] = []
        var over = false
        var recompressed: [UInt8]?
        // While a hook decides an earlier message nothing is compressed out of order (see `decisionPending`).
        let deflater = reencoding && !decisionPending ? deflater : nil
        let sink: (UnsafeRawBufferPointer) -> Void = { chunk in
            if !over && plain.count + chunk.count <= limit {
                plain.append(contentsOf: chunk)
                return
            }
            if !over {
                over = true
                recompressed = deflater.map { $0.compress(plain, final: false) }
                plain = []
            }
            if let deflater { recompressed! += deflater.compress(Array(chunk), final: false) }
        }
        do {
            try wire.withUnsafeBytes { try inflater.inflate($0, sink: sink) }
            try inflater.finishMessage(resetContext: resetsContext, sink: sink)
        } catch {
            return .failed
        }
        guard over else { return .plain(plain) }
        if let deflater { recompressed! += deflater.compress([], final: true) }
        return .tooLarge(recompressed: recompressed)
    }

    // MARK: - Past the hold limit while it arrives

    private mutating func startStreaming(now: Timestamp, into out: inout PipeOutput) {
        guard var current = message, let partial = frame else { return }
        note(.tooLargeToChange, at: current.start, "message past --hold-limit (\(settings.holdLimit) bytes) while it arrives: passed on as it comes, rules not applied", now: now, into: &out)
        releaseAll(at: now, note: "released early: a message past --hold-limit follows", into: &out)
        current.streaming = true
        message = current
        frame = FrameInProgress(header: partial.header, start: partial.start, raw: [], payload: [])
        if current.compressed && reencoding {
            // What came so far goes through the inflater and out compressed anew, as frames of their own.
            transcode(current.wirePayload + partial.payload, final: false, into: &out)
        } else {
            out.send(current.raw)
            out.send(partial.raw)
            if current.compressed { keepInflaterInStep(current.wirePayload + partial.payload, final: false) }
        }
        message!.raw = []
        message!.wirePayload = []
    }

    private mutating func stream(_ bytes: UnsafeRawBufferPointer, header: FrameHeader, at offsetInPayload: UInt64, into out: inout PipeOutput) {
        guard let current = message else { return }
        if current.compressed && reencoding {
            var plain = Array(bytes)
            if let key = header.maskKey { Masking.apply(key: key, offset: offsetInPayload, to: &plain) }
            transcode(plain, final: false, into: &out)
            return
        }
        out.send(bytes)
        if current.compressed {
            var plain = Array(bytes)
            if let key = header.maskKey { Masking.apply(key: key, offset: offsetInPayload, to: &plain) }
            keepInflaterInStep(plain, final: false)
        }
    }

    private mutating func finishStreaming(_ current: MessageInProgress, now: Timestamp, into out: inout PipeOutput) {
        if current.compressed && reencoding {
            // `transcode` frames from the message in progress, which the last frame has just closed.
            message = current
            transcode([], final: true, into: &out)
        } else if current.compressed {
            keepInflaterInStep([], final: true)
            if !reencoding, let inflater, !inflater.endsOnBlockBoundary {
                stop(reason: "a compressed message does not end between deflate blocks (RFC 7692 §7.2.1 asks the sender to flush)",
                     at: current.start, now: now, into: &out)
            }
        }
        // The message has left whole: wstap's own messages that waited for it go now.
        let pending = pendingOwn
        pendingOwn = []
        for own in pending { send(own, now: now, into: &out) }
    }

    /// Inflates compressed bytes of a message nobody will see whole, so later messages still inflate.
    private mutating func keepInflaterInStep(_ wire: [UInt8], final: Bool) {
        guard let inflater else { return }
        let discard: (UnsafeRawBufferPointer) -> Void = { _ in }
        _ = try? wire.withUnsafeBytes { try inflater.inflate($0, sink: discard) }
        if final { _ = try? inflater.finishMessage(resetContext: resetsContext, sink: discard) }
    }

    /// One frame of a streamed message on a re-encoded direction: inflated, compressed by wstap.
    private mutating func transcode(_ wire: [UInt8], final: Bool, into out: inout PipeOutput) {
        guard let inflater, let deflater, var current = message else { return }
        var compressed: [UInt8] = []
        let sink: (UnsafeRawBufferPointer) -> Void = { chunk in compressed += deflater.compress(Array(chunk), final: false) }
        _ = try? wire.withUnsafeBytes { try inflater.inflate($0, sink: sink) }
        if final {
            _ = try? inflater.finishMessage(resetContext: resetsContext, sink: sink)
            compressed += deflater.compress([], final: true)
        }
        let first = current.transcodedFrames == 0
        let header = FrameHeader(fin: final, rsv1: first, opcode: first ? current.opcode : .continuation,
                                 maskKey: current.masked ? maskKey() : nil, payloadLength: UInt64(compressed.count))
        if let key = header.maskKey { Masking.apply(key: key, offset: 0, to: &compressed) }
        out.send(header.encoded())
        out.send(compressed)
        current.transcodedFrames += 1
        message = final ? nil : current
    }

    // MARK: - wstap's own messages (inject, close)

    /// This direction's own messages go through this pipe at once; the others leave with the output
    /// for the relay to hand to the other pipe.
    private mutating func dispatch(_ own: [OwnMessage], now: Timestamp, into out: inout PipeOutput) {
        for message in own {
            if message.direction == direction { send(message, now: now, into: &out) } else { out.forOtherDirection.append(message) }
        }
    }

    /// Sends one of wstap's own messages to this direction's receiver: uncompressed (RSV1 clear, so no
    /// window changes), masked toward the server, between messages of the sender (never inside one
    /// streaming through), behind what is held. A close first lets go of what is held.
    mutating func send(_ own: OwnMessage, now: Timestamp, into out: inout PipeOutput) {
        let why: String? = stopped ? "rules stopped on this direction (frames it could not follow), so no message boundary is known"
            : inputFinished ? "the \(direction.sender) had closed its side, which wstap passed on to the \(direction.receiver)"
            : closeCommitted ? "a close had already gone to the \(direction.receiver); nothing may follow it" : nil
        var record = ChangeRecord(direction: direction, offset: offset, rules: [own.rule], actions: [own.action], result: .injected, sent: [])
        if let why {
            record.result = .dropped
            record.notes = ["not sent: \(why)"]
            out.record(TapRecord(connection: connection, timestamp: now, body: .change(record)))
            return
        }
        if message?.streaming == true {
            pendingOwn.append(own)
            return
        }
        let isClose = own.opcode == .close
        if isClose {
            releaseAll(at: now, note: "released early: rule '\(own.rule)' closes the connection", into: &out)
            ownClose = own.rule
        }
        var wire = own.payload
        var compress = false
        if own.compressed && !isClose {
            if deflate == nil {
                record.notes.append("sent uncompressed: permessage-deflate was not negotiated on this connection")
            } else if decisionPending {
                // Compressing now would put it into the window before a message still waiting to be framed.
                record.notes.append("sent uncompressed: a message held before it is not framed yet, and compression follows the order messages leave")
            } else {
                // The receiver's window now holds a message the sender never compressed: wstap compresses
                // the sender's later messages itself (unless each message stands alone).
                startReencoding(at: offset, because: "wstap sent a compressed message of its own", now: now, into: &out)
                wire = deflater!.compressMessage(own.payload)
                compress = true
            }
        }
        let pieces = isClose ? [wire[...]] : split(wire, into: own.fragments, text: own.opcode == .text && !compress, like: nil)
        let bytes = frames(opcode: own.opcode, pieces: pieces, wire: wire, compressed: compress, masked: direction == .clientToServer)
        record.sent = [SentMessage(opcode: own.opcode, frames: pieces.count, length: UInt64(own.payload.count), wireLength: UInt64(wire.count),
                                   compressed: compress, payload: preview(own.payload, own.opcode), truncated: own.payload.count > payloadCap)]
        sendInOrder(bytes, isClose: isClose, now: now, change: record, into: &out)
    }

    /// After wstap's own close went this way: the sender's close is its answer and stays here (the
    /// receiver had wstap's), and anything before it may not follow a close.
    private mutating func absorb(_ start: UInt64, isClose: Bool, rule: String, now: Timestamp, into out: inout PipeOutput) {
        let note = isClose ? "not sent on: the \(direction.sender)'s answer to wstap's close; the \(direction.receiver) has had a close already"
            : "not sent on: wstap closed this direction (rule '\(rule)'); nothing may follow a close"
        out.record(TapRecord(connection: connection, timestamp: now, body: .change(ChangeRecord(
            direction: direction, offset: start, rules: [rule], actions: [], result: .dropped, sent: [], notes: [note]))))
    }

    // MARK: - Exec hooks

    /// The first `exec` the rules asked for and not carried out yet, and its rule. One hook decides a
    /// message; a second `exec` for the same message is not carried out (its record says so).
    private static func hook(in outcome: RuleOutcome) -> (command: String, rule: String)? {
        for case .exec(let command) in outcome.effects {
            let rule = outcome.applied.first { $0.actions.contains { if case .exec(command) = $0 { true } else { false } } }?.rule
            return (command, rule ?? "exec")
        }
        return nil
    }

    /// Hands the message to the hook: it waits in its place in the queue, so later messages of the
    /// sender wait behind it; pings, pongs and the other direction do not.
    private mutating func askHook(_ command: String, rule: String, outcome: RuleOutcome, message: MessageInProgress, received: MessageRecord,
                                  now: Timestamp, into out: inout PipeOutput) {
        var outcome = outcome
        let execs = outcome.applied.flatMap(\.actions).filter { if case .exec = $0 { true } else { false } }
        for extra in execs.dropFirst() { outcome.notes.append("\(extra) not carried out: one hook decides a message, and '\(command)' was first") }
        hookTickets += 1
        let ticket = hookTickets << 1 | (direction == .clientToServer ? 0 : 1)
        // The hook sees the message as the rules left it, whole: its record says what it was.
        var asked = received
        asked.payload = outcome.payload
        asked.length = UInt64(outcome.payload.count)
        if asked.opcode == .text { asked.textValidity = UTF8Validator.isValid(asked.payload) ? .valid : .invalid }
        out.hookRequests.append(HookRequest(ticket: ticket, command: command, rule: rule,
                                            record: TapRecord(connection: connection, timestamp: now, body: .message(asked))))
        let wait = HookWait(ticket: ticket, command: command, rule: rule, undecided: Undecided(outcome: outcome, message: message, received: received))
        enqueue(Queued(bytes: [], isClose: message.opcode == .close, enqueued: now, releaseAt: now.adding(settings.hookTimeout),
                       reason: "exec", change: nil, hook: wait), now: now, into: &out)
    }

    /// The hook answered (or its shell says it cannot): the message goes as soon as what is queued
    /// before it has. An answer for a message already gone (it timed out), or a second answer for one
    /// still waiting behind others, changes nothing: the first verdict holds.
    mutating func hookAnswered(_ ticket: UInt64, _ answer: HookAnswer, now: Timestamp, into out: inout PipeOutput) {
        guard let index = queue.firstIndex(where: { $0.hook?.ticket == ticket && $0.hook?.answer == nil }) else { return }
        queue[index].hook!.answer = answer
        queue[index].releaseAt = nil
        release(at: now, into: &out)
    }

    /// Carries out the hook's verdict (or the failure setting) for a message at the head of the queue.
    /// What queued behind it stays behind whatever the verdict makes of it.
    private mutating func settle(_ wait: HookWait, enqueued: Timestamp, note: String?, now: Timestamp, into out: inout PipeOutput) {
        var outcome = wait.undecided.outcome
        let waited = now.nanoseconds - enqueued.nanoseconds
        let failure: String?
        switch wait.answer {
        case .verdict(let verdict)?:
            failure = nil
            outcome.notes.append("hook '\(wait.command)' answered \(verdict.summary)")
            let actions = verdict.actions
            if let index = outcome.applied.firstIndex(where: { $0.rule == wait.rule }) { outcome.applied[index].append(actions) }
            for action in actions {
                switch action {
                case .drop: outcome.dropped = true
                default: outcome.effects.append(action)
                }
            }
            if case .replace(let payload) = verdict.decision {
                if payload != outcome.payload { outcome.edited = true }
                outcome.payload = payload
            }
        case .failed(let reason)?:
            failure = reason
        case nil:
            if let note {
                failure = "no verdict yet (\(note))"
            } else {
                failure = "no verdict within --exec-timeout \(RelaySession.seconds(settings.hookTimeout))"
                out.hookTimedOut.append(wait.ticket)
            }
        }
        if let failure {
            switch settings.hookFailure {
            case .open: outcome.notes.append("hook '\(wait.command)': \(failure); sent on as the rules left it (--exec-fail open)")
            case .closed:
                outcome.notes.append("hook '\(wait.command)': \(failure); dropped (--exec-fail closed)")
                outcome.dropped = true
            }
        }
        inPlace(now: now, into: &out) { pipe, out in
            pipe.carryOut(outcome, message: wait.undecided.message, received: wait.undecided.received, held: waited, now: now, into: &out)
        }
    }

    /// Carries out a message taken from the head of the queue as if nothing were queued behind it, then
    /// puts back what was: it stays behind whatever the message became (sent, or queued with a delay).
    private mutating func inPlace(now: Timestamp, into out: inout PipeOutput, _ body: (inout ChangingPipe, inout PipeOutput) -> Void) {
        var behind = queue
        queue = CircularBuffer()
        let behindBytes = queuedBytes
        queuedBytes = 0
        body(&self, &out)
        if let rule = ownClose {
            // The verdict closed this direction: what the sender sent after the message may not follow.
            while !behind.isEmpty {
                let item = behind.removeFirst()
                absorb(item.start(or: offset), isClose: item.isClose, rule: rule, now: now, into: &out)
            }
            return
        }
        for item in behind { queue.append(item) }
        queuedBytes += behindBytes
    }

    // MARK: - Holds

    /// Keeps the message in its place in the queue until the control API lets it go, or --hold-timeout.
    private mutating func hold(_ outcome: RuleOutcome, message: MessageInProgress, received: MessageRecord, now: Timestamp, into out: inout PipeOutput) {
        holdIDs += 1
        let id = holdIDs << 1 | (direction == .clientToServer ? 0 : 1)
        let rules = outcome.applied.map(\.rule).joined(separator: "', '")
        note(.held, at: message.start, "held by rule '\(rules)' as hold \(id): forward, drop or edit it with the control API, or it goes on after --hold-timeout \(RelaySession.seconds(settings.holdTimeout))",
             now: now, into: &out)
        enqueue(Queued(bytes: [], isClose: message.opcode == .close, enqueued: now, releaseAt: now.adding(settings.holdTimeout), reason: "hold",
                       change: nil, held: Held(id: id, undecided: Undecided(outcome: outcome, message: message, received: received))),
                now: now, into: &out)
    }

    /// The messages held, oldest first.
    var holds: [HeldMessage] {
        queue.compactMap { item in
            guard let held = item.held else { return nil }
            let undecided = held.undecided
            return HeldMessage(id: held.id, direction: direction, offset: undecided.message.start, opcode: undecided.message.opcode,
                               payload: undecided.outcome.payload, compressed: undecided.message.compressed,
                               rules: undecided.outcome.applied.map(\.rule), since: item.enqueued,
                               releaseAt: held.decision == nil ? item.releaseAt : nil, decided: held.decision != nil)
        }
    }

    /// Lets a held message go (or not): at once when nothing waits before it, else as soon as that has.
    /// Nil when this pipe holds no such message, or it has its decision already.
    mutating func release(hold id: UInt64, _ decision: HoldDecision, now: Timestamp, into out: inout PipeOutput) -> Bool? {
        guard let index = queue.firstIndex(where: { $0.held?.id == id }) else { return nil }
        guard queue[index].held!.decision == nil else { return false }
        queue[index].held!.decision = decision
        queue[index].releaseAt = nil
        release(at: now, into: &out)
        return true
    }

    /// Carries out a held message at the head of the queue: its decision, or forward at --hold-timeout
    /// and when it is let go early (`note` says why).
    private mutating func settle(_ held: Held, enqueued: Timestamp, note: String?, now: Timestamp, into out: inout PipeOutput) {
        var outcome = held.undecided.outcome
        switch held.decision {
        case nil:
            if let note {
                outcome.notes.append(note)
                self.note(.holdReleased, at: held.undecided.message.start, note, now: now, into: &out)
            }
        case .forward?:
            outcome.notes.append("hold \(held.id) forwarded from the control API")
        case .drop?:
            outcome.dropped = true
            outcome.notes.append("hold \(held.id) dropped from the control API")
        case .replace(let payload)?:
            if payload != outcome.payload { outcome.edited = true }
            outcome.payload = payload
            outcome.notes.append("hold \(held.id) edited from the control API")
        }
        let waited = now.nanoseconds - enqueued.nanoseconds
        inPlace(now: now, into: &out) { pipe, out in
            pipe.carryOut(outcome, message: held.undecided.message, received: held.undecided.received, held: waited, now: now, into: &out)
        }
    }

    // MARK: - The queue

    /// Sends now if nothing waits before it, else queues behind what does.
    private mutating func sendInOrder(_ bytes: [UInt8], isClose: Bool, now: Timestamp, change: ChangeRecord? = nil, into out: inout PipeOutput) {
        if isClose { closeCommitted = true }
        if queue.isEmpty {
            if let change { out.record(TapRecord(connection: connection, timestamp: now, body: .change(change))) }
            out.send(bytes)
        } else {
            enqueue(Queued(bytes: bytes, isClose: isClose, enqueued: now, releaseAt: nil, reason: nil, change: change), now: now, into: &out)
        }
    }

    private mutating func enqueue(_ item: Queued, now: Timestamp, into out: inout PipeOutput) {
        if item.isClose { closeCommitted = true }
        queue.append(item)
        queuedBytes += item.weight
        release(at: now, into: &out)
        while queuedBytes > settings.holdLimit, !queue.isEmpty {
            releaseFirst(at: now, note: "released early: this direction holds more than --hold-limit (\(settings.holdLimit) bytes)", into: &out)
            release(at: now, into: &out)
        }
    }

    private mutating func release(at now: Timestamp, into out: inout PipeOutput) {
        while let first = queue.first, (first.releaseAt ?? now) <= now {
            let timedOut = first.reason == "hold" && first.held?.decision == nil
            releaseFirst(at: now, note: timedOut ? "released after --hold-timeout \(RelaySession.seconds(settings.holdTimeout))" : nil, into: &out)
        }
    }

    private mutating func releaseAll(at now: Timestamp, note: String, into out: inout PipeOutput) {
        while !queue.isEmpty {
            let early = (queue.first!.releaseAt ?? now) > now
            releaseFirst(at: now, note: early ? note : nil, into: &out)
        }
    }

    private mutating func releaseFirst(at now: Timestamp, note: String?, into out: inout PipeOutput) {
        var item = queue.removeFirst()
        queuedBytes -= item.weight
        if let wait = item.hook {
            settle(wait, enqueued: item.enqueued, note: note, now: now, into: &out)
            return
        }
        if let held = item.held {
            settle(held, enqueued: item.enqueued, note: held.decision == nil ? note : nil, now: now, into: &out)
            return
        }
        if let deferred = item.deferred {
            inPlace(now: now, into: &out) { pipe, out in
                pipe.carryOut(deferred.outcome, message: deferred.message, received: deferred.received, now: now, into: &out)
            }
            return
        }
        if var change = item.change {
            // A hook's wait (already in the record) and this one add up.
            change.heldNanoseconds = (change.heldNanoseconds ?? 0) + now.nanoseconds - item.enqueued.nanoseconds
            if let note { change.notes.append(note) }
            item.change = change
            out.record(TapRecord(connection: connection, timestamp: now, body: .change(change)))
        }
        if let note, item.reason == "hold" || item.releaseAt.map({ $0 > now }) == true {
            self.note(.holdReleased, at: item.change?.offset ?? offset, note, now: now, into: &out)
        }
        out.send(item.bytes)
    }

    // MARK: - Giving up

    /// Frames this pipe cannot follow: what it holds goes on in order, then every byte as it comes.
    private mutating func stop(reason: String, at start: UInt64, now: Timestamp, into out: inout PipeOutput) {
        releaseAll(at: now, note: "released early: rules stopped on this direction", into: &out)
        if let message, !message.streaming {
            out.send(message.raw)
            if let frame, !frame.header.opcode.isControl { out.send(frame.raw) }
        }
        message = nil
        frame = nil
        stopped = true
        note(.changesStopped, at: start, "\(reason): rules no longer apply to the \(direction.sender)'s messages; its bytes pass as they come", now: now, into: &out)
    }

    private func note(_ code: DiagnosticCode, at offset: UInt64, _ detail: String, now: Timestamp, into out: inout PipeOutput) {
        out.record(TapRecord(connection: connection, timestamp: now, body: .diagnostic(Diagnostic(code: code, direction: direction, offset: offset, detail: detail))))
    }

    // MARK: - Framing

    private func maskKey() -> UInt32 { UInt32(truncatingIfNeeded: settings.random()) }

    private func preview(_ payload: [UInt8], _ opcode: Opcode) -> [UInt8] {
        guard payload.count > payloadCap else { return payload }
        var cut = payloadCap
        // Text is cut on a character boundary, so the preview is still text.
        if opcode == .text { while cut > 0 && payload[cut] & 0xC0 == 0x80 { cut -= 1 } }
        return Array(payload[..<cut])
    }

    private func fragmentCount(fragments: Int?, size: Int?, wire: Int, original: Int) -> Int {
        if let fragments { return max(1, fragments) }
        if let size, size > 0 { return max(1, (wire + size - 1) / size) }
        return max(1, original)
    }

    /// `count` pieces of `bytes`: the received sizes when the length did not change, else about equal
    /// ones; text is never cut inside a character (a piece may then be empty).
    func split(_ bytes: [UInt8], into count: Int, text: Bool, like sizes: [Int]?) -> [ArraySlice<UInt8>] {
        guard count > 1 else { return [bytes[...]] }
        var cuts: [Int] = []
        if let sizes, sizes.count == count {
            var at = 0
            for size in sizes.dropLast() { at += size; cuts.append(at) }
        } else {
            for i in 1..<count { cuts.append(bytes.count * i / count) }
        }
        var pieces: [ArraySlice<UInt8>] = []
        var from = 0
        for var cut in cuts {
            if text { while cut > from && cut < bytes.count && bytes[cut] & 0xC0 == 0x80 { cut -= 1 } }
            cut = max(cut, from)
            pieces.append(bytes[from..<cut])
            from = cut
        }
        pieces.append(bytes[from...])
        return pieces
    }

    /// - Parameter longLengths: every length in the 8-byte form, shortest or not (`corrupt length`).
    private func frames(opcode: Opcode, pieces: [ArraySlice<UInt8>], wire: [UInt8], compressed: Bool, masked: Bool, longLengths: Bool = false) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(wire.count + 14 * pieces.count)
        for (i, piece) in pieces.enumerated() {
            let header = FrameHeader(fin: i == pieces.count - 1, rsv1: compressed && i == 0, opcode: i == 0 ? opcode : .continuation,
                                     maskKey: masked ? maskKey() : nil, payloadLength: UInt64(piece.count),
                                     lengthEncoding: longLengths ? .sixtyFourBit : nil)
            header.encode(into: &bytes)
            let start = bytes.count
            bytes += piece
            if let key = header.maskKey {
                bytes.withUnsafeMutableBytes { Masking.apply(key: key, offset: 0, to: UnsafeMutableRawBufferPointer(rebasing: $0[start...])) }
            }
        }
        return bytes
    }
}

/// A message wstap itself sends: an `inject`, the close frame of a `close` rule, or what the control
/// API sends.
struct OwnMessage {
    /// Which way it travels: toward the server is `.clientToServer`.
    var direction: Direction
    var opcode: Opcode
    var payload: [UInt8]
    /// The rule that asked for it ("control API" for the API's).
    var rule: String
    /// The action as its record shows it.
    var action: String
    var fragments = 1
    /// Compressed by wstap (the control API's `compressed`); rules' own messages never are.
    var compressed = false
}

/// A message for an exec hook: the shell writes it to the hook's stdin and reports the verdict with
/// `WebSocketRelay.Event.hookAnswered` and this ticket.
public struct HookRequest: Sendable {
    /// Unique within the connection.
    public let ticket: UInt64
    public let command: String
    /// The rule whose `exec` asked.
    public let rule: String
    /// The message record, with the whole payload as the rules left it.
    public let record: TapRecord
}

/// What the shell reports for a hook request.
public enum HookAnswer: Sendable {
    case verdict(HookVerdict)
    /// The hook cannot answer (it died, wrote garbage, is not running): the failure setting applies.
    case failed(String)
}

/// What a pipe produced for one event: records first (they describe the bytes), then the bytes, in order.
struct PipeOutput {
    /// Messages for exec hooks.
    var hookRequests: [HookRequest] = []
    /// Tickets of hook requests that ran out of time: the shell forgets them.
    var hookTimedOut: [UInt64] = []
    /// wstap's own messages for the other direction's receiver, for the relay to give that pipe.
    var forOtherDirection: [OwnMessage] = []
    var records: [TapRecord] = []
    var bytes = ByteBuffer()
    /// Set by `abort`: the rule's name. Both connections are reset after `bytes`; nothing more is sent.
    var abort: String?

    mutating func send(_ raw: UnsafeRawBufferPointer) { if abort == nil { bytes.writeBytes(raw) } }
    mutating func send(_ raw: [UInt8]) { if abort == nil { bytes.writeBytes(raw) } }
    /// A slice of a read: becomes the output itself when nothing else was sent (no copy).
    mutating func send(_ slice: ByteBuffer) {
        guard abort == nil else { return }
        if bytes.readableBytes == 0 { bytes = slice } else { bytes.writeImmutableBuffer(slice) }
    }
    mutating func record(_ record: TapRecord) { records.append(record) }
}

extension Side {
    /// The directions a message to this peer travels: to the server is `.clientToServer`.
    var directions: [Direction] {
        switch self {
        case .server: [.clientToServer]
        case .client: [.serverToClient]
        case .both: [.clientToServer, .serverToClient]
        }
    }
}
