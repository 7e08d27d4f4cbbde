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
            // The source is armed asynchronously, on dispatch's manager thread; until then the signal
            // is only ignored. Waiting for the registration closes that window, the likely way a Ctrl-C
            // sent right after the banner (printed after this returns) was lost once in CI, leaving a
            // capture on a quiet interface running (test_count_stops_by_itself_and_ctrl_c_...).
            let registered = DispatchSemaphore(value: 0)
            source.setRegistrationHandler { registered.signal() }
            source.resume()
            _ = registered.wait(timeout: .now() + .seconds(5))
            sources.append(source)
        }
    }
}
