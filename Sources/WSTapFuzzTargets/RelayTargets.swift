import NIOCore
import WSTapDissect
import WSTapRelay

/// The live relay's sans-IO core, driven as the NIO shell drives it, by a hostile client and server.
enum RelayTargets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "relay-session", input: "1 byte (mode), then events: [kind][u16 length][bytes]", maxLength: 2048, run: relaySession),
    ]

    /// What the shell knows of each side, so only events the shell could report are fed.
    private struct Shell {
        var connectRequested = false
        var upstreamConnected = false
        var clientOpen = true
        var upstreamOpen = true
        var clientInputOpen = true
        var upstreamInputOpen = true
        var closing: Set<RelaySession.Side> = []
        var timers: Set<RelaySession.Timer> = []
        var ended = false
        var tlsStarted = false
    }

    static func relaySession(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let modeChoice = reader.byte()
        let upstream = [UpstreamURL(host: "127.0.0.1", port: 9000), UpstreamURL(scheme: "wss", host: "up.test", port: 443, path: "/s?x=1")]
        let mode: RelaySession.Mode = modeChoice % 3 == 2 ? .forward : .reverse(upstream[Int(modeChoice % 3)])
        let tls = TLSSettings(interceptConnect: modeChoice & 4 != 0, passthrough: ["*.pass.test"], clientTLS: modeChoice & 8 != 0)
        var limits = RelaySession.Limits()
        limits.maxHeadBytes = 512 + Int(modeChoice >> 4) * 64
        var configuration = StreamDissector.Configuration()
        configuration.payloadCap = 64
        let session = RelaySession(connection: 1, mode: mode, tls: tls, limits: limits, clientAddress: "c", proxyAddress: "p",
                                   configuration: configuration, clock: { Timestamp(nanoseconds: 1) })
        var shell = Shell()
        func perform(_ actions: [RelaySession.Action]) {
            for action in actions {
                switch action {
                case .emit(let records):
                    for record in records {
                        FuzzCheck.expect(!shell.ended, "a record after the end record")
                        if case .end = record.body { shell.ended = true }
                    }
                case .send(let side, _):
                    FuzzCheck.expect(!shell.closing.contains(side), "bytes sent to the \(side) after closing it")
                    if side == .upstream { FuzzCheck.expect(shell.upstreamConnected, "bytes sent upstream before it was connected") }
                case .shutdownOutput:
                    break
                case .close(let side), .reset(let side):
                    shell.closing.insert(side)
                case .connect:
                    FuzzCheck.expect(!shell.connectRequested, "a second connect without a switch")
                    shell.connectRequested = true
                case .switchUpstream:
                    shell.connectRequested = true
                    shell.upstreamConnected = false
                case .startClientTLS:
                    shell.tlsStarted = true
                case .startTimer(let timer, _):
                    FuzzCheck.expect(shell.timers.insert(timer).inserted, "timer \(timer) started twice")
                case .cancelTimer(let timer):
                    FuzzCheck.expect(shell.timers.remove(timer) != nil, "timer \(timer) cancelled but not running")
                }
            }
        }
        perform(session.handle(.clientConnected))
        var steps = 0
        while !reader.isAtEnd && steps < 256 {
            steps += 1
            let kind = reader.byte() % 12
            let bytes = reader.bytes(reader.u16() % 4096)
            let event: RelaySession.Event
            switch kind {
            case 0, 1, 2:
                guard shell.clientInputOpen && !shell.closing.contains(.client) else { continue }
                event = .clientData(ByteBuffer(bytes: bytes))
            case 3, 4:
                guard shell.upstreamConnected && shell.upstreamInputOpen && !shell.closing.contains(.upstream) else { continue }
                event = .upstreamData(ByteBuffer(bytes: bytes))
            case 5:
                guard shell.connectRequested && !shell.upstreamConnected && !shell.closing.contains(.upstream) else { continue }
                shell.upstreamConnected = true
                event = .upstreamConnected(serverAddress: "127.0.0.1:9000")
            case 6:
                guard shell.connectRequested && !shell.upstreamConnected else { continue }
                shell.connectRequested = false
                event = .upstreamConnectFailed(reason: "connection refused")
            case 7:
                guard shell.clientInputOpen else { continue }
                shell.clientInputOpen = false
                event = .inputClosed(.client)
            case 8:
                guard shell.upstreamConnected && shell.upstreamInputOpen else { continue }
                shell.upstreamInputOpen = false
                event = .inputClosed(.upstream)
            case 9:
                let side: RelaySession.Side = bytes.first.map { $0 & 1 == 0 } ?? true ? .client : .upstream
                guard side == .client || shell.upstreamConnected else { continue }
                event = bytes.count % 2 == 0 ? .reset(side) : .closed(side)
            case 10:
                guard let timer = shell.timers.first else { continue }
                shell.timers.remove(timer)
                event = .timerFired(timer)
            default:
                if shell.tlsStarted {
                    shell.tlsStarted = false
                    event = .clientTLSEstablished
                } else if tls.clientTLS {
                    event = .clientTLSHello(serverName: bytes.isEmpty ? nil : String(decoding: bytes.prefix(40), as: UTF8.self))
                } else {
                    continue
                }
            }
            perform(session.handle(event))
            _ = session.wantsClientData
        }
        // The shell reports both channels gone at the end; the connection must then have ended.
        perform(session.handle(.closed(.client)))
        perform(session.handle(.closed(.upstream)))
        FuzzCheck.expect(shell.ended, "no end record after both channels closed")
        FuzzCheck.expect(shell.timers.isEmpty, "timers left running after the end: \(shell.timers)")
    }
}
