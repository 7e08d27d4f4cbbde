import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import WSTapDissect
import WSTapFormats
import WSTapRelay
import WSTapRules

#if canImport(Glibc)
import Glibc
#endif

/// The exec hooks of a proxy (`--exec`, the `exec` action): one long-lived process per command,
/// shared by every connection, speaking `HookProtocol` over its stdin and stdout. Its stderr is
/// wstap's, so what a hook prints for its author shows up where wstap's own messages do.
///
/// The sans-IO relay holds each message a hook decides and owns the timeout; this only moves lines. A
/// hook that dies or writes a line that is not a verdict fails every message it owes at once, is said
/// so once, and is started again with a growing pause (0.5 s doubling to 30 s).
public final class ExecHooks: Sendable {
    private let loop: EventLoop
    private let processes: NIOLockedValueBox<[String: HookProcess]> = NIOLockedValueBox([:])
    private let settings: HookProcess.Settings
    /// Process groups of the hooks running now, for `stop`, which cannot wait for the loop.
    private let running: NIOLockedValueBox<Set<pid_t>>

    /// - Parameters:
    ///   - maxLine: longest line a hook may write (a replacement is the biggest): past it, the hook is
    ///     out of step and restarted.
    ///   - failure: what messages the hook cannot decide become, for the notices.
    ///   - notice: where the one-line notices go (stderr).
    public init(group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton, maxLine: Int, failure: ChangeSettings.HookFailure,
                notice: @escaping @Sendable (String) -> Void) {
        loop = group.next()
        let running = NIOLockedValueBox<Set<pid_t>>([])
        self.running = running
        settings = HookProcess.Settings(maxLine: maxLine, failure: failure, notice: notice, running: running)
    }

    /// Starts the processes of `commands` now (the rules' hooks), so a hook that cannot start says so
    /// before the first message needs it. Others start when a message first asks for them.
    public func start(_ commands: [String]) {
        for command in commands { _ = process(for: command) }
    }

    /// Writes the message to its hook; `answer` gets the verdict, or why there is none. It is not
    /// called for a request forgotten first.
    func ask(_ request: HookRequest, connection: UInt64, answer: @escaping @Sendable (HookAnswer) -> Void) {
        process(for: request.command).ask(request, connection: connection, answer: answer)
    }

    /// The relay stopped waiting (timeout): a late verdict is dropped here.
    func forget(connection: UInt64, ticket: UInt64) {
        for process in processes.withLockedValue({ Array($0.values) }) { process.forget(connection: connection, ticket: ticket) }
    }

    /// The connection is gone: nothing it asked is owed any more.
    func forget(connection: UInt64) {
        for process in processes.withLockedValue({ Array($0.values) }) { process.forget(connection: connection, ticket: nil) }
    }

    /// Ends every hook (SIGTERM to its process group, so a pipeline ends whole): wstap is stopping and
    /// exits right after, so this does not wait for the loop.
    public func stop() {
        for process in processes.withLockedValue({ Array($0.values) }) { process.stop() }
        for group in running.withLockedValue({ $0 }) { kill(-group, SIGTERM) }
    }

    private func process(for command: String) -> HookProcess {
        processes.withLockedValue { all in
            if let running = all[command] { return running }
            let made = HookProcess(command: command, loop: loop, settings: settings)
            all[command] = made
            made.startSoon()
            return made
        }
    }
}

/// One hook's process and the requests it owes. Everything but `init` runs on `loop`.
final class HookProcess: @unchecked Sendable {
    struct Settings: Sendable {
        var maxLine: Int
        var failure: ChangeSettings.HookFailure
        var notice: @Sendable (String) -> Void
        var running: NIOLockedValueBox<Set<pid_t>>
    }

    private let command: String
    private let loop: EventLoop
    private let settings: Settings

    private enum State {
        case idle
        /// Spawned; the pipe channel is being set up. Requests wait here.
        case starting(pid: pid_t, queued: [ByteBuffer])
        case running(pid: pid_t, channel: Channel)
        /// It ended; it starts again at the scheduled time.
        case waiting(Scheduled<Void>)
        case stopped
    }

    private var state = State.idle
    private struct Owed {
        var connection: UInt64
        var ticket: UInt64
        var answer: @Sendable (HookAnswer) -> Void
    }
    /// By the id written in the request line.
    private var owed: [UInt64: Owed] = [:]
    private var nextID: UInt64 = 0
    private var pause = TimeAmount.milliseconds(500)
    /// What was said since the hook last gave a verdict: each is said once.
    private var said: Set<String> = []

    init(command: String, loop: EventLoop, settings: Settings) {
        self.command = command
        self.loop = loop
        self.settings = settings
    }

    func startSoon() { loop.execute { self.start() } }

    func ask(_ request: HookRequest, connection: UInt64, answer: @escaping @Sendable (HookAnswer) -> Void) {
        loop.execute { self.write(request, connection: connection, answer: answer) }
    }

    /// `ticket` nil: everything the connection asked (it ended). A ticket: the relay stopped waiting for it.
    func forget(connection: UInt64, ticket: UInt64?) {
        loop.execute {
            let before = self.owed.count
            self.owed = self.owed.filter { $0.value.connection != connection || (ticket != nil && $0.value.ticket != ticket) }
            if ticket != nil && self.owed.count < before {
                self.sayOnce("slow", "did not answer within --exec-timeout; the messages it is late for \(self.failureWord), and a late verdict is ignored")
            }
        }
    }

    func stop() {
        loop.execute {
            if case .waiting(let scheduled) = self.state { scheduled.cancel() }
            self.state = .stopped
        }
    }

    private var failureWord: String {
        settings.failure == .open ? "go on as the rules left them (--exec-fail open)" : "are dropped (--exec-fail closed)"
    }

    private func sayOnce(_ kind: String, _ line: String) {
        guard said.insert(kind).inserted else { return }
        settings.notice("wstap: hook '\(command)' \(line)")
    }

    // MARK: - Requests and verdicts

    private func write(_ request: HookRequest, connection: UInt64, answer: @escaping @Sendable (HookAnswer) -> Void) {
        switch state {
        case .idle, .waiting, .stopped:
            answer(.failed("the hook is not running (it is restarted after a pause)"))
            return
        case .running(_, let channel) where !channel.isWritable:
            sayOnce("backlog", "is not reading its input fast enough (over \(settings.maxLine) bytes unread); the messages it cannot take \(failureWord)")
            answer(.failed("the hook is not reading its input"))
            return
        case .starting, .running:
            break
        }
        nextID += 1
        owed[nextID] = Owed(connection: connection, ticket: request.ticket, answer: answer)
        let line = ByteBuffer(bytes: HookProtocol.request(id: nextID, rule: request.rule, record: request.record))
        switch state {
        case .starting(let pid, var queued):
            state = .idle  // let go of the array's copy in `state`
            queued.append(line)
            state = .starting(pid: pid, queued: queued)
        case .running(_, let channel):
            channel.writeAndFlush(line, promise: nil)
        default:
            break
        }
    }

    fileprivate func received(line: ByteBuffer) {
        let bytes = Array(line.readableBytesView)
        if bytes.isEmpty { return }  // a blank line says nothing
        let parsed: (id: UInt64, verdict: HookVerdict)
        do {
            parsed = try HookProtocol.verdict(bytes)
        } catch {
            let shown = String(decoding: bytes.prefix(80), as: UTF8.self)
            outOfStep("wrote a line that is not a verdict (\(error.description)): \(shown)\(bytes.count > 80 ? "…" : "")")
            return
        }
        // An id it no longer owes: the relay stopped waiting (timeout) or the connection ended.
        guard let owed = owed.removeValue(forKey: parsed.id) else { return }
        said.removeAll()
        pause = .milliseconds(500)
        owed.answer(.verdict(parsed.verdict))
    }

    /// A line that is not a verdict, or one too long: wstap cannot tell which answer is whose any
    /// more, so the process is ended and started again.
    fileprivate func outOfStep(_ what: String) {
        sayOnce("garbage", "\(what); the messages it owes \(failureWord), and it is started again")
        said.insert("exit")  // its end is this, said already
        if case .running(let pid, let channel) = state {
            kill(-pid, SIGKILL)
            channel.close(promise: nil)
        }
    }

    // MARK: - The process

    private func start() {
        guard case .idle = state else { return }
        let spawned: (pid: pid_t, stdin: CInt, stdout: CInt)
        do {
            spawned = try Self.spawn(command)
        } catch {
            sayOnce("spawn", "cannot be started: \(error); messages \(failureWord)")
            restartLater()
            return
        }
        state = .starting(pid: spawned.pid, queued: [])
        settings.running.withLockedValue { _ = $0.insert(spawned.pid) }
        let maxLine = settings.maxLine
        NIOPipeBootstrap(group: loop)
            // A request is as big as the message it carries: room for a few of the largest held ones.
            .channelOption(.writeBufferWaterMark, value: .init(low: maxLine / 2, high: maxLine * 2))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineBasedFrameDecoder(), maximumBufferSize: maxLine))
                    try channel.pipeline.syncOperations.addHandler(HookLineHandler(process: self))
                }
            }
            .takingOwnershipOfDescriptors(input: spawned.stdout, output: spawned.stdin)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    guard case .starting(let pid, let queued) = self.state else {
                        channel.close(promise: nil)  // stopped meanwhile
                        return
                    }
                    self.state = .running(pid: pid, channel: channel)
                    for line in queued { channel.write(line, promise: nil) }
                    channel.flush()
                case .failure(let error):
                    close(spawned.stdout)
                    close(spawned.stdin)
                    kill(-spawned.pid, SIGKILL)
                    self.ended(pid: spawned.pid, why: "its pipes could not be set up (\(error))")
                }
            }
    }

    /// The pipe closed (the hook exited, or closed its stdout, or was ended for garbage).
    fileprivate func channelClosed() {
        guard case .running(let pid, _) = state else { return }
        // A hook that closed its stdout but runs on cannot answer: it is ended too, pipeline and all.
        kill(-pid, SIGKILL)
        ended(pid: pid, why: nil)
    }

    private func ended(pid: pid_t, why: String?) {
        let wasStopped: Bool
        if case .stopped = state { wasStopped = true } else { wasStopped = false }
        let failing = owed
        owed = [:]
        for item in failing.values { item.answer(.failed("the hook ended before it answered")) }
        if !wasStopped { state = .idle }
        // Reaped off the loop: waitpid blocks until the process is gone.
        DispatchQueue.global().async {
            var reaped: Int32 = 0
            while waitpid(pid, &reaped, 0) == -1 && errno == EINTR {}
            let status = reaped
            self.settings.running.withLockedValue { _ = $0.remove(pid) }
            self.loop.execute {
                guard !wasStopped, case .idle = self.state else { return }
                self.sayOnce("exit", "\(why ?? Self.describe(status: status)); messages \(self.failureWord) until it is started again in \(Self.seconds(self.pause))")
                self.restartLater()
            }
        }
    }

    private func restartLater() {
        let wait = pause
        pause = min(pause * 2, .seconds(30))
        state = .waiting(loop.scheduleTask(in: wait) {
            guard case .waiting = self.state else { return }
            self.state = .idle
            self.start()
        })
    }

    static func describe(status: Int32) -> String {
        // WIFEXITED / WEXITSTATUS / WTERMSIG, which Swift does not import (they are macros).
        let signal = status & 0x7F
        if signal == 0 {
            let code = (status >> 8) & 0xFF
            return code == 127 ? "exited with status 127 (the shell did not find the command)" : "exited with status \(code)"
        }
        return "was ended by signal \(signal)"
    }

    static func seconds(_ amount: TimeAmount) -> String {
        let ms = amount.nanoseconds / 1_000_000
        return ms % 1000 == 0 ? "\(ms / 1000) s" : "\(ms / 1000).\(ms % 1000 / 100) s"
    }

    struct SpawnError: Error, CustomStringConvertible {
        var description: String
    }

    /// `/bin/sh -c COMMAND` with pipes on its stdin and stdout; it inherits stderr and nothing else.
    static func spawn(_ command: String) throws -> (pid: pid_t, stdin: CInt, stdout: CInt) {
        var toChild: [CInt] = [-1, -1]
        var fromChild: [CInt] = [-1, -1]
        // Only this loop spawns, so nothing can inherit the pipes between pipe() and FD_CLOEXEC.
        guard pipe(&toChild) == 0 else { throw SpawnError(description: "pipe: \(String(cString: strerror(errno)))") }
        guard pipe(&fromChild) == 0 else {
            close(toChild[0]); close(toChild[1])
            throw SpawnError(description: "pipe: \(String(cString: strerror(errno)))")
        }
        for fd in toChild + fromChild { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // dup2 clears close-on-exec on 0 and 1; wstap's other descriptors (sockets, record files) are
        // closed in the child unless they are close-on-exec already.
        posix_spawn_file_actions_adddup2(&actions, toChild[0], 0)
        posix_spawn_file_actions_adddup2(&actions, fromChild[1], 1)
        for fd in inheritable() where fd > 2 { posix_spawn_file_actions_addclose(&actions, fd) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Ignored signals are inherited: wstap ignores SIGPIPE (NIO does), and SIGINT and SIGTERM while
        // it waits for them on a dispatch source. The hook gets the default action of each.
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        // The signal mask is inherited too, and NIO's threads block nearly every signal: none for the hook.
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        // Its own process group: `stop` and a restart end a pipeline (`sh -c 'a | b'`) whole.
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP))
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sh"), strdup("-c"), strdup(command), nil]
        defer { for arg in argv { free(arg) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, "/bin/sh", &actions, &attributes, argv, environ)
        close(toChild[0])
        close(fromChild[1])
        guard rc == 0 else {
            close(toChild[1]); close(fromChild[0])
            throw SpawnError(description: String(cString: strerror(rc)))
        }
        return (pid, toChild[1], fromChild[0])
    }
}

/// wstap's open descriptors that a child would inherit (no FD_CLOEXEC), from /proc/self/fd.
private func inheritable() -> [CInt] {
    guard let directory = opendir("/proc/self/fd") else { return [] }
    defer { closedir(directory) }
    var found: [CInt] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard let fd = CInt(name), fd != dirfd(directory) else { continue }
        let flags = fcntl(fd, F_GETFD)
        if flags != -1 && flags & FD_CLOEXEC == 0 { found.append(fd) }
    }
    return found
}

/// The hook's stdout, a line at a time.
private final class HookLineHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let process: HookProcess

    init(process: HookProcess) { self.process = process }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        process.received(line: unwrapInboundIn(data))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is ByteToMessageDecoderError.PayloadTooLargeError {
            process.outOfStep("wrote a line longer than the longest verdict wstap takes")
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        process.channelClosed()
        context.fireChannelInactive()
    }
}
