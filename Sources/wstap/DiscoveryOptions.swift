import ArgumentParser
import WSTapCapture
import WSTapDissect
import WSTapFormats

/// How `read` and `capture` find WebSocket sessions in TCP traffic.
struct DiscoveryOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Treat connections on this port as WebSocket from their first captured byte (captures that start after the upgrade); repeatable.", valueName: "port"))
    var decodeAs: [UInt16] = []

    @Flag(name: .long, help: "Do not guess WebSocket on connections that do not start with an HTTP request.")
    var noHeuristic = false

    @Option(name: .long, help: ArgumentHelp("Decrypt TLS with the secrets in this NSS key log (what SSLKEYLOGFILE makes clients write; re-read as it grows). pcapng files with embedded secrets need none.", valueName: "file"))
    var keylog: String?

    /// A session for one capture; `file` is read for embedded TLS secrets (pcapng Decryption Secrets Blocks).
    func makeSession(_ configuration: StreamDissector.Configuration, file: String? = nil) -> CaptureSession {
        makeSessions(configuration, count: 1, file: file)[0]
    }

    /// `count` sessions set up alike, for a read that spreads connections over threads. Each has its
    /// own key log (they are used from different threads); the file is searched for secrets once.
    func makeSessions(_ configuration: StreamDissector.Configuration, count: Int, file: String? = nil) -> [CaptureSession] {
        let embedded = file.flatMap { PcapngSecrets.keyLogText(path: $0) }
        return (0..<count).map { _ in
            let session = CaptureSession(configuration: configuration)
            session.decodeAsPorts = Set(decodeAs)
            session.heuristic = !noHeuristic
            var keyLog: TLSKeyLog?
            if let keylog {
                do {
                    keyLog = try TLSKeyLog(path: keylog)
                } catch {
                    fail("\(error)")
                }
            }
            if let embedded {
                keyLog = keyLog ?? TLSKeyLog()
                keyLog!.add(text: embedded)
            }
            session.keyLog = keyLog
            return session
        }
    }

    /// One line per reason some TLS connections stayed encrypted, so a missing key log is not a mystery.
    func reportTLS(of sessions: [CaptureSession]) {
        var reasons: [String: Int] = [:]
        for session in sessions { reasons.merge(session.tlsNotDecrypted, uniquingKeysWith: +) }
        for (reason, count) in reasons.sorted(by: { $0.key < $1.key }) {
            OutputFile.standardError.write(Array("wstap: \(counted(count, "TLS connection")) not decrypted: \(reason)\n".utf8))
        }
    }
}
