import CPcap
import WSTapDissect

#if canImport(Glibc)
import Glibc
#endif

extension PcapFile {
    /// Reads `path` with its TCP connections spread over `sessions`, each on a thread of its own: the
    /// calling thread decodes packets and hands each segment to the session that owns its connection
    /// (both directions of a connection always go to the same one). Connections are independent, so on
    /// several cores the dissecting, and above all the inflating, of a capture runs in parallel.
    ///
    /// The output is the same as `read(path:session:…)` with one session: records come out in packet
    /// order and connection ids are numbered in the order connections appear, by merging the sessions'
    /// results packet by packet.
    @discardableResult
    public static func read(path: String, sessions: [CaptureSession], emit: ([TapRecord]) -> Void,
                            progress: ((Progress) -> Void)? = nil) throws -> Summary {
        precondition(!sessions.isEmpty)
        let opened = try open(path)
        defer { opened.close() }
        let handle = opened.handle
        let link = try PacketFeed.linkType(of: handle, name: "'\(path)'")
        for session in sessions { session.tracksLifecycle = true }

        let pool = ShardPool(sessions: sessions)
        defer { pool.stop() }
        var merger = ShardMerger(shards: sessions.count)
        var chunk = ShardPool.Chunk(shards: sessions.count)
        var packets = 0
        var last = Timestamp(nanoseconds: 0)
        var time = PacketTime(nanosecondFraction: true)
        var header: UnsafeMutablePointer<pcap_pkthdr>?
        var data: UnsafePointer<UInt8>?
        let file = pcap_file(handle)
        var failure: Failure?

        while true {
            let status = pcap_next_ex(handle, &header, &data)
            if status == 1, let header, let data {
                packets += 1
                last = time.timestamp(of: header.pointee)
                let frame = UnsafeBufferPointer(start: data, count: Int(header.pointee.caplen))
                if let segment = PacketDecoder.tcpSegment(link: link, frame: frame, originalLength: Int(header.pointee.len)) {
                    // Symmetric in the two endpoints, so both directions land on the same session.
                    let shard = Int((segment.source.spreadHash ^ segment.destination.spreadHash) % UInt64(sessions.count))
                    chunk.items[shard].append(.init(sequence: packets, segment: segment, time: last))
                    chunk.count += 1
                    if chunk.count >= ShardPool.chunkSize {
                        for finished in pool.submit(chunk) { merger.merge(finished, emit: emit) }
                        chunk = ShardPool.Chunk(shards: sessions.count)
                    }
                }
                if let progress, packets & 4095 == 0 {
                    progress(Progress(bytesRead: file.map { Int64(ftello($0)) } ?? 0, packets: packets, connections: merger.connectionsWithRecords))
                }
            } else if status == -2 {
                break
            } else {
                failure = Failure(description: "'\(path)' is damaged after \(packets) packets: \(String(cString: pcap_geterr(handle))). Records up to there were written.")
                break
            }
        }
        if chunk.count > 0 { for finished in pool.submit(chunk) { merger.merge(finished, emit: emit) } }
        for finished in pool.waitForAll() { merger.merge(finished, emit: emit) }
        // Every session is idle now: end the connections still open, in id order as one session would.
        merger.mergeFinish(sessions.map { session in
            var records: [TapRecord] = []
            session.finish(at: last, into: &records)
            return (records, session.takeLifecycle())
        }, emit: emit)
        if let failure { throw failure }
        return Summary(clampedTimestamps: time.clamped)
    }
}

/// The dissecting threads: each owns one session and works through its share of every chunk.
final class ShardPool: @unchecked Sendable {
    // @unchecked: the queues, `inFlight` and every chunk's fields are read and written under `lock`
    // once a chunk is submitted; the merger reads a chunk's outputs only after all shards finished it.
    static let chunkSize = 512
    /// Chunks submitted but not yet merged; bounds memory when dissecting is slower than reading.
    static let maxInFlight = 4

    struct Item {
        var sequence: Int
        var segment: TCPSegment
        var time: Timestamp
    }

    /// What one packet produced in one session.
    struct Output {
        var sequence: Int
        var lifecycle: [(id: UInt64, opened: Bool)]
        var records: [TapRecord]
    }

    final class Chunk {
        var items: [[Item]]
        var count = 0
        var outputs: [[Output]]
        var unfinished: Int

        init(shards: Int) {
            items = Array(repeating: [], count: shards)
            outputs = Array(repeating: [], count: shards)
            unfinished = shards
        }
    }

    private let sessions: [CaptureSession]
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var queues: [[Chunk]]
    private var inFlight: [Chunk] = []
    private var stopping = false
    private var threads: [pthread_t] = []

    init(sessions: [CaptureSession]) {
        self.sessions = sessions
        queues = Array(repeating: [], count: sessions.count)
        pthread_mutex_init(lock, nil)
        pthread_cond_init(changed, nil)
        for shard in sessions.indices {
            var thread = pthread_t()
            let context = Unmanaged.passRetained(ShardContext(pool: self, shard: shard)).toOpaque()
            let created = pthread_create(&thread, nil, { context in
                let shardContext = Unmanaged<ShardContext>.fromOpaque(context!).takeRetainedValue()
                shardContext.pool.work(shard: shardContext.shard)
                return nil
            }, context)
            precondition(created == 0, "cannot start a dissecting thread: \(created)")
            threads.append(thread)
        }
    }

    private final class ShardContext {
        let pool: ShardPool
        let shard: Int
        init(pool: ShardPool, shard: Int) { self.pool = pool; self.shard = shard }
    }

    deinit {
        pthread_mutex_destroy(lock)
        pthread_cond_destroy(changed)
        lock.deallocate()
        changed.deallocate()
    }

    /// Hands a chunk to every shard; returns the oldest chunks that are finished once too many are in
    /// flight (waiting for them if need be), in submission order.
    func submit(_ chunk: Chunk) -> [Chunk] {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        for shard in queues.indices { queues[shard].append(chunk) }
        inFlight.append(chunk)
        pthread_cond_broadcast(changed)
        var finished: [Chunk] = []
        while let oldest = inFlight.first, oldest.unfinished == 0 || inFlight.count > Self.maxInFlight {
            while oldest.unfinished > 0 { pthread_cond_wait(changed, lock) }
            finished.append(inFlight.removeFirst())
        }
        return finished
    }

    /// Waits for every chunk in flight; returns them in submission order.
    func waitForAll() -> [Chunk] {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        while inFlight.contains(where: { $0.unfinished > 0 }) { pthread_cond_wait(changed, lock) }
        defer { inFlight = [] }
        return inFlight
    }

    func stop() {
        pthread_mutex_lock(lock)
        stopping = true
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(lock)
        for thread in threads { pthread_join(thread, nil) }
    }

    private func work(shard: Int) {
        let session = sessions[shard]
        var records: [TapRecord] = []
        while true {
            pthread_mutex_lock(lock)
            while queues[shard].isEmpty && !stopping { pthread_cond_wait(changed, lock) }
            if queues[shard].isEmpty {
                pthread_mutex_unlock(lock)
                return
            }
            let chunk = queues[shard].removeFirst()
            // Take this shard's items under the lock: the other shards write their own slots of the
            // same arrays, and an unlocked read of the array could race with that write.
            let items = chunk.items[shard]
            chunk.items[shard] = []
            pthread_mutex_unlock(lock)

            var outputs: [Output] = []
            for item in items {
                records.removeAll(keepingCapacity: true)
                session.add(item.segment, at: item.time, into: &records)
                let lifecycle = session.takeLifecycle()
                if !records.isEmpty || !lifecycle.isEmpty {
                    outputs.append(Output(sequence: item.sequence, lifecycle: lifecycle, records: records))
                }
            }

            pthread_mutex_lock(lock)
            chunk.outputs[shard] = outputs
            chunk.unfinished -= 1
            pthread_cond_broadcast(changed)
            pthread_mutex_unlock(lock)
        }
    }
}

/// Puts the shards' outputs back in packet order and renumbers connections as one session would have:
/// in the order the reassembler opened them across the whole capture.
struct ShardMerger {
    private var globalIDs: [[UInt64: UInt64]]
    private var nextID: UInt64 = 1
    private var withRecords: Set<UInt64> = []
    private(set) var connectionsWithRecords = 0

    init(shards: Int) {
        globalIDs = Array(repeating: [:], count: shards)
    }

    mutating func merge(_ chunk: ShardPool.Chunk, emit: ([TapRecord]) -> Void) {
        var cursors = Array(repeating: 0, count: chunk.outputs.count)
        while true {
            // The shard whose next output has the lowest packet number (few shards: a scan is enough).
            var next = -1
            for shard in cursors.indices where cursors[shard] < chunk.outputs[shard].count {
                if next < 0 || chunk.outputs[shard][cursors[shard]].sequence < chunk.outputs[next][cursors[next]].sequence { next = shard }
            }
            guard next >= 0 else { return }
            let output = chunk.outputs[next][cursors[next]]
            cursors[next] += 1
            let records = renumber(output.records, lifecycle: output.lifecycle, shard: next)
            if !records.isEmpty { emit(records) }
        }
    }

    /// The sessions' final records (connections still open when the capture ended), in the order of
    /// the connections' global ids, as a single session ends them.
    mutating func mergeFinish(_ finals: [(records: [TapRecord], lifecycle: [(id: UInt64, opened: Bool)])], emit: ([TapRecord]) -> Void) {
        // Each session ends its connections one after another, so a connection's records are adjacent.
        var groups: [(id: UInt64, records: [TapRecord])] = []
        for (shard, final) in finals.enumerated() {
            for var record in final.records {
                record.connection = globalIDs[shard][record.connection] ?? record.connection
                if groups.last?.id == record.connection {
                    groups[groups.count - 1].records.append(record)
                } else {
                    groups.append((record.connection, [record]))
                }
            }
            for (id, opened) in final.lifecycle where !opened { globalIDs[shard][id] = nil }
        }
        let records = groups.sorted { $0.id < $1.id }.flatMap(\.records)
        if !records.isEmpty { emit(records) }
    }

    private mutating func renumber(_ records: [TapRecord], lifecycle: [(id: UInt64, opened: Bool)], shard: Int) -> [TapRecord] {
        for (id, opened) in lifecycle where opened {
            globalIDs[shard][id] = nextID
            nextID += 1
        }
        var result = records
        for index in result.indices {
            let global = globalIDs[shard][result[index].connection] ?? result[index].connection
            result[index].connection = global
            if withRecords.insert(global).inserted { connectionsWithRecords += 1 }
        }
        for (id, opened) in lifecycle where !opened {
            if let global = globalIDs[shard].removeValue(forKey: id) { withRecords.remove(global) }
        }
        return result
    }
}
