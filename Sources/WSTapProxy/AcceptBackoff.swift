import NIOCore
import WSTapFormats

#if canImport(Glibc)
import Glibc
#endif

/// What the listener does when `accept` fails for lack of descriptors or memory. The pending client
/// stays in the kernel's backlog, so the listening socket stays readable and retrying at once spins a
/// core (NIO's AcceptBackoffHandler does not help: the channel keeps its read registered after the
/// failed accept). This handler stops reading for `backoff`, then tries again; it says so once when the
/// limit is hit and once when accepting works again. Waiting clients are accepted on recovery.
final class AcceptBackoff: ChannelInboundHandler {
    typealias InboundIn = Channel
    typealias InboundOut = Channel

    static let backoff = TimeAmount.milliseconds(250)

    private let notice: @Sendable (String) -> Void
    /// Failed accepts since the limit was hit; nil while accepting works.
    private var failures: Int?
    private var since = NIODeadline.now()
    private var paused = false

    init(notice: @escaping @Sendable (String) -> Void) { self.notice = notice }

    static func isResourceShortage(_ error: Error) -> Bool {
        guard let io = error as? IOError else { return false }
        return [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(io.errnoCode)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard Self.isResourceShortage(error) else {
            context.fireErrorCaught(error)
            return
        }
        if let count = failures {
            failures = count + 1
        } else {
            failures = 1
            since = .now()
            var limit = rlimit()
            let text = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 ? " (ulimit -n is \(limit.rlim_cur))" : ""
            notice("wstap: cannot accept connections: \(describe(error)); the descriptor limit\(text) is reached. "
                   + "Retrying every \(Self.backoff.nanoseconds / 1_000_000) ms; raise the limit with ulimit -n.")
        }
        guard !paused else { return }
        paused = true
        // Turning autoRead off takes the listening socket out of the poll set; on again puts it back.
        context.channel.setOption(.autoRead, value: false).whenComplete { _ in }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: Self.backoff) {
            let (handler, context) = bound.value
            handler.paused = false
            context.channel.setOption(.autoRead, value: true).whenComplete { _ in }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if let count = failures {
            failures = nil
            let seconds = Double((NIODeadline.now() - since).nanoseconds) / 1e9
            notice("wstap: accepting connections again, after \(count) refused \(count == 1 ? "attempt" : "attempts") in \(String(format: "%.1f", seconds)) s")
        }
        context.fireChannelRead(data)
    }
}
