import Foundation
import Testing
import WSTapControl

/// The binary serves copies of files in docs/; scripts/embed-files.py makes them.
@Suite struct EmbeddedFilesTests {
    @Test func theServedOpenAPIDocumentIsDocsOpenAPIJSON() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/openapi.json")
        let file = try [UInt8](Data(contentsOf: path))
        let api = ControlAPI(store: RecordStore(), access: ControlAccess(token: "t", listenHost: "127.0.0.1", port: 1))
        let served = api.respond(to: ControlRequest(method: "GET", target: "/api/openapi.json", headers: ["host": "127.0.0.1:1", "authorization": "Bearer t"]))
        guard case .complete(200, "application/json", let body, _) = served else { throw EmbeddedMismatch.notServed }
        #expect(body == file, "docs/openapi.json changed: run python3 scripts/embed-files.py")
        // It is JSON, and names every route the API has.
        let document = try #require(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])
        let paths = try #require(document["paths"] as? [String: Any])
        for route in ["/api/status", "/api/connections", "/api/records", "/api/events", "/api/holds", "/api/rules", "/api/rules/test",
                      "/api/connections/{conn}/messages", "/api/connections/{conn}/close", "/api/connections/{conn}/holds/{hold}"] {
            #expect(paths[route] != nil, "\(route) is not in docs/openapi.json")
        }
    }

    enum EmbeddedMismatch: Error { case notServed }
}
