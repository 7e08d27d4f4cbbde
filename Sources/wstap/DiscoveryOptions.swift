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
        if let file, let embedded = PcapngSecrets.keyLogText(path: file) {
            keyLog = keyLog ?? TLSKeyLog()
            keyLog!.add(text: embedded)
        }
        session.keyLog = keyLog
        return session
    }

    /// One line per reason some TLS connections stayed encrypted, so a missing key log is not a mystery.
    func reportTLS(of session: CaptureSession) {
        for (reason, count) in session.tlsNotDecrypted.sorted(by: { $0.key < $1.key }) {
            OutputFile.standardError.write(Array("wstap: \(counted(count, "TLS connection")) not decrypted: \(reason)\n".utf8))
        }
    }
}
