import NIOCore
import Synchronization
import WSTapControl
import WSTapRelay

/// Every live proxied connection by number, so the control API can reach it from outside its event
/// loop (--ui). A connection is added when its client connects and removed when the client's socket
/// closes; a command runs on the connection's own loop, between its reads.
public final class ConnectionRegistry: ConnectionSteering {
    private struct Entry: Sendable {
        let loop: EventLoop
        let connection: NIOLoopBound<RelayConnection>
    }

    private let entries = Mutex<[UInt64: Entry]>([:])

    public init() {}

    func add(_ id: UInt64, _ connection: RelayConnection, loop: EventLoop) {
        let entry = Entry(loop: loop, connection: NIOLoopBound(connection, eventLoop: loop))
        entries.withLock { $0[id] = entry }
    }

    func remove(_ id: UInt64) {
        _ = entries.withLock { $0.removeValue(forKey: id) }
    }

    public var count: Int { entries.withLock { $0.count } }

    public var liveConnections: [UInt64] { entries.withLock { $0.keys.sorted() } }

    public func steer(_ id: UInt64, _ command: SteerCommand, reply: @escaping @Sendable (SteerAnswer?) -> Void) {
        guard let entry = entries.withLock({ $0[id] }) else { return reply(nil) }
        entry.loop.execute { reply(entry.connection.value.steer(command)) }
    }
}
