import Foundation
import Testing
import WSTapDissect

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
