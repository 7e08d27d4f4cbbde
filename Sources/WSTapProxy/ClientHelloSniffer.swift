import NIOCore
import WSTapWire

/// Reported once the client's first TLS record was seen: the SNI it asked for (nil without one).
struct ClientHelloSeen {
    let serverName: String?
}

/// --listen-tls: reads the server name from the client's ClientHello as it passes, before the TLS
/// handler consumes it, so records can say which name the client asked for. NIOSSL picks the
/// certificate from the SNI but does not tell the channel about it. Every byte goes on unchanged;
/// the sniffer removes itself once it has seen enough.
final class ClientHelloSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var seen: [UInt8] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        seen += buffer.readableBytesView.prefix(TLSClientHello.maximumRecord - seen.count)
        context.fireChannelRead(data)
        let serverName: String?
        switch TLSClientHello.parse(seen) {
        case .needMoreBytes where seen.count < TLSClientHello.maximumRecord:
            return
        case .clientHello(let name):
            serverName = name
        default:
            serverName = nil  // not TLS (the TLS handler will fail it) or an unreadable first record
        }
        seen = []
        context.fireUserInboundEventTriggered(ClientHelloSeen(serverName: serverName))
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
