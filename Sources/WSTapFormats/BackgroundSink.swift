import WSTapDissect

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Moves encoding and writing onto a thread of their own, so `read` and `capture` dissect the next
/// packets while the previous records are encoded and written (on a 2-core machine, about a third of a
/// deflate capture's time is output). Batches keep their order, and ones that queued up while the
/// writer was busy go out together, in one write.
///
/// The queue is bounded by an estimate of its size: a reader faster than the disk waits instead of
/// piling records up in memory. The proxy does not use this: it writes each batch before forwarding
/// the bytes it describes, which is how a killed proxy loses nothing it has relayed.
public final class BackgroundSink: RecordSink, @unchecked Sendable {
    // @unchecked: every mutable field is guarded by `lock`, and `thread` is written before any
    // other thread can see this object and read only by `finish()`.
    private let downstream: any RecordSink
    private let limit: Int
    private let writeSize: Int
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let queued = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let drained = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var queue: [[TapRecord]] = []
    private var costs: [Int] = []
    private var queuedCost = 0
    private var closed = false
    private var writing = false
    private var thread = pthread_t()

    /// `limit` bounds the queued records' estimated size in bytes; `writeSize` is how much the writer
    /// takes at once.
    public init(_ downstream: any RecordSink, limit: Int = 4 << 20, writeSize: Int = 512 << 10) {
        self.downstream = downstream
        self.limit = limit
        self.writeSize = writeSize
        pthread_mutex_init(lock, nil)
        pthread_cond_init(queued, nil)
        pthread_cond_init(drained, nil)
        let context = Unmanaged.passRetained(self).toOpaque()
        let created = pthread_create(&thread, nil, { context in
            let sink = Unmanaged<BackgroundSink>.fromOpaque(context!).takeRetainedValue()
            sink.drainUntilFinished()
            return nil
        }, context)
        precondition(created == 0, "cannot start the record writer thread: \(created)")
    }

    deinit {
        pthread_mutex_destroy(lock)
        pthread_cond_destroy(queued)
        pthread_cond_destroy(drained)
        lock.deallocate()
        queued.deallocate()
        drained.deallocate()
    }

    public func write(_ records: [TapRecord]) {
        guard !records.isEmpty else { return }
        let cost = records.reduce(0) { $0 + Self.estimatedSize($1) }
        pthread_mutex_lock(lock)
        while queuedCost > 0 && queuedCost + cost > limit && !closed { pthread_cond_wait(drained, lock) }
        queue.append(records)
        costs.append(cost)
        queuedCost += cost
        pthread_cond_signal(queued)
        pthread_mutex_unlock(lock)
    }

    /// Returns once everything queued so far has been written (e.g. before printing a summary that
    /// should come after the records on the console).
    public func drain() {
        pthread_mutex_lock(lock)
        while !queue.isEmpty || writing { pthread_cond_wait(drained, lock) }
        pthread_mutex_unlock(lock)
    }

    /// Writes everything queued, then stops the thread. Call once, before reporting that output is
    /// complete; later `write` calls are not written.
    public func finish() {
        pthread_mutex_lock(lock)
        closed = true
        pthread_cond_signal(queued)
        pthread_mutex_unlock(lock)
        pthread_join(thread, nil)
    }

    private func drainUntilFinished() {
        pthread_mutex_lock(lock)
        while true {
            while queue.isEmpty && !closed { pthread_cond_wait(queued, lock) }
            if queue.isEmpty { break }
            // Take up to about `writeSize` at a time: one write(2) per taken group, and an encoding
            // buffer that stays small enough to be reused rather than mapped afresh.
            var taken = 0
            var cost = 0
            while taken < queue.count && (taken == 0 || cost + costs[taken] <= writeSize) {
                cost += costs[taken]
                taken += 1
            }
            let batches = Array(queue[..<taken])
            queue.removeFirst(taken)
            costs.removeFirst(taken)
            queuedCost -= cost
            writing = true
            pthread_cond_broadcast(drained)
            pthread_mutex_unlock(lock)
            downstream.write(batches.count == 1 ? batches[0] : Array(batches.joined()))
            pthread_mutex_lock(lock)
            writing = false
            pthread_cond_broadcast(drained)
        }
        pthread_mutex_unlock(lock)
    }

    private static func estimatedSize(_ record: TapRecord) -> Int {
        if case .message(let message) = record.body { return 256 + message.payload.count * 2 }
        return 512
    }
}
