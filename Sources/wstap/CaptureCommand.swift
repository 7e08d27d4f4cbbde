import ArgumentParser
import Dispatch
import Synchronization
import WSTapCapture
import WSTapDissect
import WSTapFormats

#if canImport(Glibc)
import Glibc
#endif

struct CaptureCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capture",
        abstract: "Capture live on an interface (libpcap) and write the same records as the live proxy.",
        discussion: """
            Needs root or CAP_NET_RAW. Records appear as packets arrive; Ctrl-C (or SIGTERM) stops, ends \
            the open connections, and prints how many packets were captured and dropped. Sessions are \
            found as in `wstap read`: by the HTTP upgrade, by --decode-as PORT, or by the heuristic.

            Examples:
              sudo wstap capture -i lo -f 'tcp port 8080'
              sudo wstap capture -i any -f 'tcp port 443 or tcp port 80' --jsonl live.jsonl --write live.pcap
              sudo wstap capture -i eth0 -c 1000 -q --jsonl - | jq .
            """
    )

    @Option(name: .shortAndLong, help: ArgumentHelp("Interface to capture on ('lo', 'eth0', 'any'; see `ip link`).", valueName: "interface"))
    var interface: String

    // -f as in tshark's capture filter; --filter (of OutputOptions) selects records, like tshark's -Y.
    @Option(name: [.customShort("f"), .long], help: ArgumentHelp("Capture filter in tcpdump syntax, e.g. 'tcp port 8080': which packets the kernel hands over.", valueName: "bpf"))
    var bpf: String?

    @Option(name: .shortAndLong, help: ArgumentHelp("Stop after this many packets.", valueName: "count"))
    var count: Int?

    @Option(name: .shortAndLong, help: ArgumentHelp("Also save the raw packets to this pcap file (readable by `wstap read`, tshark, tcpdump).", valueName: "file"))
    var write: String?

    @Flag(name: .long, help: "Put the interface in promiscuous mode (see traffic not addressed to this host).")
    var promiscuous = false

    @Option(name: .long, help: ArgumentHelp("Bytes kept of each packet; shorter than the packets loses data (reported as gaps).", valueName: "bytes"))
    var snapLength: Int32 = 262_144

    @OptionGroup var output: OutputOptions
    @OptionGroup var discovery: DiscoveryOptions

    func validate() throws {
        if let count, count <= 0 { throw ValidationError("--count must be 1 or more packets.") }
        if snapLength < 64 { throw ValidationError("--snap-length must be at least 64 bytes to hold the headers.") }
    }

    func run() throws {
        var options = LiveCapture.Options(interface: interface, filter: bpf)
        options.promiscuous = promiscuous
        options.snapLength = snapLength
        let capture: LiveCapture
        do {
            capture = try LiveCapture(options)
            if let write { try capture.write(to: write) }
        } catch {
            fail("\(error)")
        }
        let sinks = output.makeSinks(background: true)
        let session = discovery.makeSession(output.dissectorConfiguration)

        // Ctrl-C only asks the capture loop to stop (it looks at least every 100 ms); the loop then ends
        // the open connections and flushes everything before the process exits.
        let stop = CaptureStop()
        ShutdownSignals.install { stop.requestAndWait() }

        let banner = "wstap capturing on \(interface) (\(capture.link))" + (bpf.map { ", BPF '\($0)'" } ?? "")
            + (write.map { ", packets to \($0)" } ?? "") + (output.jsonl.map { ", records to \($0)" } ?? "") + "; Ctrl-C stops\n"
        OutputFile.standardError.write(Array(banner.utf8))

        let summary: LiveCapture.Summary
        do {
            summary = try capture.run(session: session, limit: count, shouldStop: { stop.requested }, emit: { sinks.all.write($0) })
        } catch {
            sinks.finish()
            fail("\(error)")
        }
        sinks.finish()
        discovery.reportTLS(of: [session])
        var line = "wstap: captured \(counted(summary.packets, "packet")) (\(counted(summary.tcpSegments, "TCP segment"))), "
            + "\(counted(summary.connections, "connection")) dissected; dropped \(summary.droppedByKernel) in the kernel, \(summary.droppedByInterface) by the interface"
        if summary.droppedByKernel > 0 { line += " (records may show gaps; a narrower --bpf helps)" }
        OutputFile.standardError.write(Array((line + "\n").utf8))
        stop.finished()
    }
}

/// The handshake between the signal handler and the capture loop.
final class CaptureStop: Sendable {
    private let flag = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)

    var requested: Bool { flag.load(ordering: .relaxed) }

    /// Called on the signal queue: ask the loop to stop, then hold the exit until it has flushed.
    func requestAndWait() {
        flag.store(true, ordering: .relaxed)
        done.wait()
    }

    func finished() { done.signal() }
}
