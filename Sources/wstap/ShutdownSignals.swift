import Dispatch

#if canImport(Glibc)
import Glibc
#endif

/// Runs `cleanup` once on SIGINT or SIGTERM, then exits with status 0 (a requested stop is not a failure).
enum ShutdownSignals {
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []

    static func install(_ cleanup: @escaping @Sendable () -> Void) {
        for signalNumber in [SIGINT, SIGTERM] {
            signal(signalNumber, SIG_IGN)  // let the dispatch source see it instead of the default handler
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler {
                cleanup()
                exit(0)
            }
            source.resume()
            sources.append(source)
        }
    }
}
