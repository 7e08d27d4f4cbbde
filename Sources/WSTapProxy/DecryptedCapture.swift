import NIOCore
import NIOExtras

/// `--pcap FILE`: the cleartext of every proxied connection as one pcap that Wireshark dissects as
/// HTTP + WebSocket. Taps sit after TLS: on the upstream leg always (exactly what the server saw), on
/// the client leg from the first byte in reverse mode and from the end of the TLS handshake for
/// intercepted CONNECT tunnels. Addresses and ports are the real ones of each leg.
public final class DecryptedCapture: Sendable {
    private let sink: NIOWritePCAPHandler.SynchronizedFileSink
    public let path: String

    public init(path: String) throws {
        self.path = path
        do {
            sink = try NIOWritePCAPHandler.SynchronizedFileSink.fileSinkWritingToFile(path: path) { _ in
                // A write error (disk full) stops the capture; the relay itself goes on.
            }
        } catch {
            throw ProxyError(description: "--pcap: cannot write '\(path)': \(describe(error)). Check that the directory exists and is writable.")
        }
    }

    func handler(mode: NIOWritePCAPHandler.Mode) -> NIOWritePCAPHandler {
        NIOWritePCAPHandler(mode: mode, settings: .init(), fileSink: sink.write)
    }

    /// Flushes and closes the file; call once, at shutdown.
    public func close() { try? sink.syncClose() }
}
