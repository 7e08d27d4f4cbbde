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
                      "/api/connections/{conn}/messages", "/api/connections/{conn}/close", "/api/connections/{conn}/holds/{hold}", "/api/export", "/api/replays"] {
            #expect(paths[route] != nil, "\(route) is not in docs/openapi.json")
        }
    }

    /// The page is served from the binary as the files in ui/ are, with a policy that lets no
    /// script but its own run (it shows payloads from the network), and only to GET.
    @Test func theWebUIFilesAreServedAsTheyAreInUI() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../ui")
        let api = ControlAPI(store: RecordStore(), access: ControlAccess(token: "t", listenHost: "127.0.0.1", port: 1))
        let names = try FileManager.default.contentsOfDirectory(atPath: root.path).sorted()
        #expect(names == ["app.js", "detail.js", "index.html", "model.js", "style.css", "table.js"], "a file in ui/ is not served: add it to scripts/embed-files.py")
        for name in names {
            let path = name == "index.html" ? "/" : "/ui/\(name)"
            let served = api.respond(to: ControlRequest(method: "GET", target: path, headers: ["host": "127.0.0.1:1", "cookie": "wstap_token=t"]))
            guard case .complete(200, let type, let body, let headers) = served else { throw EmbeddedMismatch.notServed }
            let file = try [UInt8](Data(contentsOf: root.appendingPathComponent(name)))
            #expect(body == file, "ui/\(name) changed: run python3 scripts/embed-files.py")
            #expect(type.hasPrefix(name.hasSuffix(".js") ? "text/javascript" : name.hasSuffix(".css") ? "text/css" : "text/html"))
            #expect(headers.contains { $0.0 == "Content-Security-Policy" && $0.1.contains("script-src 'self'") })
        }
        #expect(api.respond(to: ControlRequest(method: "POST", target: "/", headers: ["host": "127.0.0.1:1", "cookie": "wstap_token=t"])).status == 405)
        // Without the token the page is not served either.
        #expect(api.respond(to: ControlRequest(method: "GET", target: "/ui/app.js", headers: ["host": "127.0.0.1:1"])).status == 401)
    }

    enum EmbeddedMismatch: Error { case notServed }
}
