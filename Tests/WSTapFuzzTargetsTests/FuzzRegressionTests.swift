import Foundation
import Testing
import WSTapFuzzTargets

/// Every input a fuzz target ever failed on is kept in Tests/Regressions/<target>/ and run again here
/// without libFuzzer, and every target runs once over its seeds from the reference captures, so the
/// harnesses themselves stay alive between fuzzing runs (scripts/fuzz.sh).
@Suite struct FuzzRegressionTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Regressions").standardized
    static let captures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../shared/captures").standardized

    @Test func everyKeptInputStillPasses() throws {
        var count = 0
        for target in FuzzTarget.all {
            let folder = Self.root.appendingPathComponent(target.name)
            for file in (try? FileManager.default.contentsOfDirectory(at: folder, includingPropertiesForKeys: nil)) ?? [] {
                target.run(Array(try Data(contentsOf: file)))
                count += 1
            }
        }
        #expect(count > 0)
    }

    @Test func everyFolderOfKeptInputsNamesATarget() throws {
        let folders = try FileManager.default.contentsOfDirectory(atPath: Self.root.path)
        for folder in folders { #expect(FuzzTarget.named(folder) != nil, "Tests/Regressions/\(folder) is no fuzz target") }
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: captures.path) || ProcessInfo.processInfo.environment["CI"] != nil))
    func everyTargetRunsOverItsSeeds() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("wstap-seeds-\(getpid())")
        defer { try? FileManager.default.removeItem(at: directory) }
        let counts = try FuzzSeeds.write(to: directory.path, captures: Self.captures.path, regressions: Self.root.path)
        for (name, count) in counts {
            #expect(count > 0, "no seeds for \(name)")
            let target = try #require(FuzzTarget.named(name))
            let folder = directory.appendingPathComponent(name)
            for file in try FileManager.default.contentsOfDirectory(at: folder, includingPropertiesForKeys: nil) {
                target.run(Array(try Data(contentsOf: file)))
            }
        }
    }
}
