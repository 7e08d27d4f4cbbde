import Foundation
import Testing
@testable import WSTapDissect
import WSTapFormats
import WSTapWire

@Suite struct DocumentationTests {
    /// docs/diagnostics.md is what users read to interpret codes: it must list every code with its severity.
    @Test func diagnosticsDocListsEveryCode() throws {
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/diagnostics.md")
        let text = try String(contentsOf: docs, encoding: .utf8)
        for code in DiagnosticCode.allCases {
            #expect(text.contains("| `\(code.rawValue)` | \(code.severity.rawValue) |"), "\(code.rawValue) missing or wrong severity")
        }
    }
}

/// docs/record-schema.md is the contract for everyone who reads the JSON Lines: every key the encoder
/// writes, for every record type, must be documented in that type's section.
@Suite struct RecordSchemaDocumentationTests {
    static func sections() throws -> [String: String] {
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/record-schema.md")
        let text = try String(contentsOf: docs, encoding: .utf8)
        var sections: [String: String] = [:]
        for part in text.components(separatedBy: "\n## `").dropFirst() {
            let name = String(part.prefix { $0 != "`" })
            sections[name] = part
        }
        sections["*"] = text.components(separatedBy: "\n## ").first ?? ""  // the keys every record has, the list of types
        return sections
    }

    /// One record of every type, with every optional key present.
    static var samples: [TapRecord] {
        let ts = Timestamp(nanoseconds: 1_700_000_000_000_000_000)
        let request = HTTPHead(startLine: .request(method: "GET", target: "/", version: "HTTP/1.1"), headers: [("Host", "a")])
        let response = HTTPHead(startLine: .response(version: "HTTP/1.1", status: 101, reason: "Switching Protocols"), headers: [])
        let tls = TLSLegInfo(serverName: "a", verified: true)
        let text = MessageRecord(direction: .clientToServer, opcode: .text, frames: 1, wireLength: 2, length: 2, compressed: false,
                                 payload: Array("hi".utf8), truncated: true, closeCode: nil, closeReason: nil, inflateFailed: true,
                                 incomplete: true, offset: 0, textValidity: .valid)
        let close = MessageRecord(direction: .serverToClient, opcode: .close, frames: 1, wireLength: 1, length: 1, compressed: false,
                                  payload: [3], truncated: false, closeCode: nil, closeReason: nil, inflateFailed: false, incomplete: false, offset: 9)
        let sent = [SentMessage(opcode: .text, frames: 1, length: 2, wireLength: 2, compressed: true, payload: Array("HI".utf8), truncated: true),
                    SentMessage(opcode: .binary, frames: 2, length: 1, wireLength: 1, compressed: false, payload: [0xFF], truncated: false)]
        let bodies: [TapRecord.Body] = [
            .open(OpenRecord(client: "c", server: "s", url: "ws://a/", request: request, response: response, subprotocol: "p",
                             extensions: "permessage-deflate", clientTLS: tls, upstreamTLS: tls)),
            .http(HTTPExchangeRecord(url: "http://a/", request: request, response: response, wasUpgradeAttempt: true,
                                     requestBodyBytes: 1, responseBodyBytes: 2, durationNanoseconds: 3)),
            .frame(FrameRecord(direction: .clientToServer, header: FrameHeader(fin: true, opcode: .text, maskKey: 1, payloadLength: 2), offset: 0)),
            .message(text), .message(close),
            .diagnostic(Diagnostic(code: .badAccept, direction: .serverToClient, offset: 0, detail: "d")),
            .gap(GapRecord(direction: .clientToServer, bytes: 5, offset: 7)),
            .change(ChangeRecord(direction: .clientToServer, offset: 0, rules: ["r"], actions: ["drop"], result: .edited, sent: sent,
                                 heldNanoseconds: 5, marks: ["m"], notes: ["n"])),
            .end(EndRecord(reason: "r", closedBy: "client", clientBytes: 1, serverBytes: 2)),
        ]
        return bodies.map { TapRecord(connection: 1, timestamp: ts, body: $0) }
    }

    @Test func everyKeyTheEncoderWritesIsInItsTypesSection() throws {
        let sections = try Self.sections()
        for record in Self.samples {
            let line = JSONLinesEncoder.line(record)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let type = try #require(object["type"] as? String)
            let section = try #require(sections[type], "docs/record-schema.md has no section for `\(type)`")
            #expect(sections["*"]!.contains("`\(type)`"), "`\(type)` is not in the list of types")
            var keys = Set(object.keys).subtracting(["v", "type", "conn", "ts"])
            for case let nested as [[String: Any]] in object.values { for element in nested { keys.formUnion(element.keys) } }
            for key in keys.sorted() {
                #expect(section.contains("`\(key)`"), "`\(key)` of `\(type)` records is not in docs/record-schema.md")
            }
        }
    }
}
