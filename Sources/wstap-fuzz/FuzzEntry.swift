import WSTapFuzzTargets

#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer's entry points. The target comes from WSTAP_FUZZ_TARGET (libFuzzer owns the command line):
///   WSTAP_FUZZ_TARGET=frame-parser .build-fuzz/release/wstap-fuzz CORPUS_DIR -max_total_time=60
/// scripts/fuzz.sh builds this with --sanitize=fuzzer,address and runs every target.
nonisolated(unsafe) private var selected: FuzzTarget?

private func printError(_ text: String) {
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>>>) -> CInt {
    let name = getenv("WSTAP_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let target = FuzzTarget.named(name) else {
        let names = FuzzTarget.all.map(\.name).joined(separator: ", ")
        printError("wstap-fuzz: set WSTAP_FUZZ_TARGET to one of: \(names)\n")
        exit(2)
    }
    selected = target
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: count)) } ?? []
    selected?.run(bytes)
    return 0
}

#if !WSTAP_LIBFUZZER
/// Without libFuzzer: `wstap-fuzz list`, `wstap-fuzz run TARGET FILE...` (replay inputs, e.g. a crash
/// found elsewhere, under a debugger) and `wstap-fuzz seeds DIR CAPTURES REGRESSIONS` (write each
/// target's seed corpus from the reference captures and the kept regression inputs).
@main
struct FuzzTool {
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        switch arguments.first {
        case "list":
            for target in FuzzTarget.all { print("\(target.name)\t\(target.maxLength)\t\(target.input)") }
        case "run" where arguments.count >= 2:
            guard let target = FuzzTarget.named(arguments[1]) else { usage() }
            for path in arguments.dropFirst(2) {
                guard let bytes = FuzzSeeds.read(path) else {
                    printError("wstap-fuzz: cannot read \(path)\n")
                    exit(1)
                }
                target.run(bytes)
                print("\(target.name): \(path): ok")
            }
        case "seeds" where arguments.count == 4:
            do {
                let counts = try FuzzSeeds.write(to: arguments[1], captures: arguments[2], regressions: arguments[3])
                for (name, count) in counts { print("\(name)\t\(count) seeds") }
            } catch {
                printError("wstap-fuzz: \(error)\n")
                exit(1)
            }
        default:
            usage()
        }
    }

    static func usage() -> Never {
        printError("usage: wstap-fuzz list | run TARGET FILE... | seeds DIR CAPTURES REGRESSIONS\n")
        exit(64)
    }
}
#endif
